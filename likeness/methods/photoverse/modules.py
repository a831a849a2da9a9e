"""PhotoVerse's trainable parts: the two adapters and the dual-branch cross-attention processor.

Laid out like IP-Adapter so the weights look familiar to diffusers users:

- every cross-attention (``attn2``) gets a :class:`PhotoVerseAttnProcessor` holding
  ``to_k_ip`` / ``to_v_ip`` (``nn.ModuleList`` of one bias-free ``Linear`` each) and ``scale``
  (a list, the image-branch weight), exactly the attributes of diffusers' ``IPAdapterAttnProcessor2_0``;
- the image adapter is the UNet's ``encoder_hid_proj`` (a ``MultiIPAdapterImageProjection`` around
  :class:`ImageAdapter`, ``encoder_hid_dim_type="ip_image_proj"``), so the pipeline's own
  ``ip_adapter_image_embeds=[...]`` argument carries the CLIP features in, as for IP-Adapter;
- the file ``ip_adapter.safetensors`` holds ``image_proj.*`` and ``ip_adapter.{1,3,5,...}.to_k_ip.weight``
  (cross-attention processors numbered as in IP-Adapter checkpoints).

What differs from IP-Adapter, and why it needs its own processor: PhotoVerse trains with *random
fusion* (text branch only x2, image branch only x2, or both) and samples with user-set scales for
both branches. The per-sample branch weights live in a :class:`BranchState` shared by all processors.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn


class AdapterMLP(nn.Module):
    """The paper's adapter: project to ``hidden`` (1024), LayerNorm, LeakyReLU, project to ``out_dim``."""

    def __init__(self, in_dim: int, hidden: int, out_dim: int):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(in_dim, hidden), nn.LayerNorm(hidden), nn.LeakyReLU(), nn.Linear(hidden, out_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class TextAdapter(nn.Module):
    """CLIP features of ``m`` layers (B, m, D) -> ``m`` pseudo-word embeddings S* (B, m, d_text), one MLP per layer."""

    def __init__(self, num_layers: int, image_dim: int, hidden: int, text_dim: int):
        super().__init__()
        self.adapters = nn.ModuleList(AdapterMLP(image_dim, hidden, text_dim) for _ in range(num_layers))

    def forward(self, layer_features: torch.Tensor) -> torch.Tensor:
        return torch.stack([a(layer_features[:, i]) for i, a in enumerate(self.adapters)], dim=1)


class ImageAdapter(nn.Module):
    """CLIP patch features (N, T, D) -> image tokens (N, T, cross_attention_dim)."""

    def __init__(self, image_dim: int, hidden: int, cross_attention_dim: int):
        super().__init__()
        self.proj = AdapterMLP(image_dim, hidden, cross_attention_dim)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.proj(features)


@dataclass
class BranchState:
    """Per-call branch weights shared by every processor, plus what training collects.

    ``text_weight`` / ``image_weight``: ``None`` (1 for every sample) or a (B,) tensor, e.g. the
    random-fusion weights of a training batch or, at sampling time, 0 on the image branch of the
    unconditional half of a classifier-free-guidance batch.
    """

    text_weight: torch.Tensor | None = None
    image_weight: torch.Tensor | None = None
    collect_values: bool = False
    values: list = field(default_factory=list)  # mean |V_ip| per processor call (the L1 on image-branch values)

    def reset(self) -> None:
        self.text_weight = self.image_weight = None
        self.collect_values = False
        self.values = []


def _per_sample(weight: torch.Tensor | None, batch: int, like: torch.Tensor) -> torch.Tensor | None:
    if weight is None:
        return None
    weight = weight.to(like.device, like.dtype)
    if weight.shape[0] != batch:
        raise ValueError(f"branch weights for {weight.shape[0]} samples, but the batch has {batch}")
    return weight.view(batch, 1, 1)


class PhotoVerseAttnProcessor(nn.Module):
    """Decoupled cross-attention: text K/V (the layer's own ``to_k``/``to_v``, with LoRA) and image
    K/V (``to_k_ip``/``to_v_ip``) share the query; the two attention outputs are added with weights.

    A branch whose weight is 0 for every sample of the batch is not computed at all.
    """

    def __init__(self, hidden_size: int, cross_attention_dim: int, num_tokens: int, state: BranchState,
                 scale: float = 1.0, text_scale: float = 1.0):
        super().__init__()
        self.hidden_size = hidden_size
        self.cross_attention_dim = cross_attention_dim
        self.num_tokens = [num_tokens]
        self.scale = [scale]  # image-branch scale, as IP-Adapter's processors call it
        self.text_scale = text_scale
        self.to_k_ip = nn.ModuleList([nn.Linear(cross_attention_dim, hidden_size, bias=False)])
        self.to_v_ip = nn.ModuleList([nn.Linear(cross_attention_dim, hidden_size, bias=False)])
        self.state = state

    @staticmethod
    def _attend(attn, query, key, value, batch, mask=None):
        head_dim = key.shape[-1] // attn.heads
        key = key.view(batch, -1, attn.heads, head_dim).transpose(1, 2)
        value = value.view(batch, -1, attn.heads, head_dim).transpose(1, 2)
        out = F.scaled_dot_product_attention(query, key, value, attn_mask=mask, dropout_p=0.0, is_causal=False)
        return out.transpose(1, 2).reshape(batch, -1, attn.heads * head_dim).to(query.dtype)

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None,
                 scale: float = 1.0, ip_adapter_masks=None):
        images = None
        if isinstance(encoder_hidden_states, tuple):
            encoder_hidden_states, images = encoder_hidden_states
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            batch, channel, height, width = hidden_states.shape
            hidden_states = hidden_states.view(batch, channel, height * width).transpose(1, 2)
        batch = hidden_states.shape[0]
        if attention_mask is not None:
            length = encoder_hidden_states.shape[1] if encoder_hidden_states is not None else hidden_states.shape[1]
            attention_mask = attn.prepare_attention_mask(attention_mask, length, batch)
            attention_mask = attention_mask.view(batch, attn.heads, -1, attention_mask.shape[-1])
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
        query = attn.to_q(hidden_states)
        if encoder_hidden_states is None:
            encoder_hidden_states = hidden_states
        elif attn.norm_cross:
            encoder_hidden_states = attn.norm_encoder_hidden_states(encoder_hidden_states)
        head_dim = query.shape[-1] // attn.heads
        query = query.view(batch, -1, attn.heads, head_dim).transpose(1, 2)

        out = None
        text_w = _per_sample(self.state.text_weight, batch, query)
        if text_w is None or bool(text_w.any()):
            text = self._attend(attn, query, attn.to_k(encoder_hidden_states), attn.to_v(encoder_hidden_states), batch,
                                attention_mask)
            text = text * self.text_scale
            out = text if text_w is None else text * text_w
        image_w = _per_sample(self.state.image_weight, batch, query)
        if images is not None and self.scale[0] != 0 and (image_w is None or bool(image_w.any())):
            tokens = images[0].reshape(batch, -1, images[0].shape[-1]).to(query.dtype)
            ip_value = self.to_v_ip[0](tokens)
            if self.state.collect_values:
                self.state.values.append(ip_value.float().abs().mean())
            image = self._attend(attn, query, self.to_k_ip[0](tokens), ip_value, batch) * self.scale[0]
            image = image if image_w is None else image * image_w
            out = image if out is None else out + image
        if out is None:  # both branches off: the layer adds nothing (only reachable by setting both weights to 0)
            out = torch.zeros(batch, query.shape[2], attn.heads * head_dim, device=query.device, dtype=query.dtype)

        hidden_states = attn.to_out[1](attn.to_out[0](out))
        if input_ndim == 4:
            hidden_states = hidden_states.transpose(-1, -2).reshape(batch, channel, height, width)
        if attn.residual_connection:
            hidden_states = hidden_states + residual
        return hidden_states / attn.rescale_output_factor


def cross_attention_layers(unet) -> list[tuple[str, object, int]]:
    """``(processor name, Attention module, IP-Adapter key id)`` of every cross-attention, in
    ``unet.attn_processors`` order; ids 1, 3, 5, ... as in IP-Adapter checkpoints."""
    modules = dict(unet.named_modules())
    layers, key_id = [], 1
    for name in unet.attn_processors:
        if name.endswith("attn1.processor"):
            continue
        layers.append((name, modules[name[: -len(".processor")]], key_id))
        key_id += 2
    return layers


def install(unet, *, image_dim: int, hidden: int, num_tokens: int, state: BranchState,
            text_scale: float = 1.0, image_scale: float = 1.0) -> ImageAdapter:
    """Put the image adapter and a :class:`PhotoVerseAttnProcessor` on every cross-attention of ``unet``."""
    from diffusers.models.attention_processor import AttnProcessor2_0
    from diffusers.models.embeddings import MultiIPAdapterImageProjection

    cross_dim = unet.config.cross_attention_dim
    if not isinstance(cross_dim, int):
        raise ValueError("PhotoVerse needs one cross_attention_dim for the whole UNet (SD 1.x / 2.x)")
    device, dtype = unet.device, unet.dtype
    processors = {}
    layers = {name: attn for name, attn, _ in cross_attention_layers(unet)}
    for name in unet.attn_processors:
        if name not in layers:
            processors[name] = AttnProcessor2_0()
            continue
        to_k = layers[name].to_k
        hidden_size = getattr(to_k, "base_layer", to_k).out_features
        processors[name] = PhotoVerseAttnProcessor(hidden_size, cross_dim, num_tokens, state, scale=image_scale,
                                                   text_scale=text_scale).to(device, dtype)
    unet.set_attn_processor(processors)
    adapter = ImageAdapter(image_dim, hidden, cross_dim).to(device, dtype)
    unet.encoder_hid_proj = MultiIPAdapterImageProjection([adapter])
    unet.config.encoder_hid_dim_type = "ip_image_proj"
    return adapter


def processors(unet) -> list[PhotoVerseAttnProcessor]:
    return [p for p in unet.attn_processors.values() if isinstance(p, PhotoVerseAttnProcessor)]


def set_scales(unet, *, text: float | None = None, image: float | None = None) -> None:
    """The sampling-time weights of the two branches (both 1 by default)."""
    for proc in processors(unet):
        if text is not None:
            proc.text_scale = float(text)
        if image is not None:
            proc.scale = [float(image)]


def ip_adapter_state_dict(unet) -> dict[str, torch.Tensor]:
    """``image_proj.*`` and ``ip_adapter.<id>.to_{k,v}_ip.weight``, the layout of IP-Adapter's safetensors files."""
    state = {f"image_proj.{k}": v for k, v in unet.encoder_hid_proj.image_projection_layers[0].state_dict().items()}
    for name, attn, key_id in cross_attention_layers(unet):
        proc = attn.processor
        state[f"ip_adapter.{key_id}.to_k_ip.weight"] = proc.to_k_ip[0].weight
        state[f"ip_adapter.{key_id}.to_v_ip.weight"] = proc.to_v_ip[0].weight
    return {k: v.detach().float().cpu().contiguous() for k, v in state.items()}


def load_ip_adapter_state(unet, state: dict[str, torch.Tensor], source: str) -> None:
    """Load :func:`ip_adapter_state_dict` output into an :func:`install`-ed UNet; shape mismatches name ``source``."""
    expected = ip_adapter_state_dict(unet)
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = [k for k in expected if k in state and tuple(state[k].shape) != tuple(expected[k].shape)]
    if missing or unexpected or wrong:
        detail = "; ".join(filter(None, [
            f"missing {', '.join(missing[:3])}" if missing else "",
            f"unexpected {', '.join(unexpected[:3])}" if unexpected else "",
            (f"{wrong[0]} has shape {tuple(state[wrong[0]].shape)}, this base model needs "
             f"{tuple(expected[wrong[0]].shape)}") if wrong else "",
        ]))
        raise ValueError(f"{source}: image-branch weights do not fit this base model's UNet ({detail})")
    adapter = unet.encoder_hid_proj.image_projection_layers[0]
    adapter.load_state_dict({k[len("image_proj."):]: v for k, v in state.items() if k.startswith("image_proj.")})
    with torch.no_grad():
        for _, attn, key_id in cross_attention_layers(unet):
            proc = attn.processor
            proc.to_k_ip[0].weight.copy_(state[f"ip_adapter.{key_id}.to_k_ip.weight"])
            proc.to_v_ip[0].weight.copy_(state[f"ip_adapter.{key_id}.to_v_ip.weight"])


class PlaceholderWords:
    """A forward hook on the token-embedding layer: the rows of the placeholder tokens become each
    sample's pseudo-words (``words``: (B, m, d)), so gradients reach the text adapter.

    The replacement is a product with a 0/1 match matrix, so the frozen table gets no gradient.
    """

    def __init__(self, embedding: nn.Module, token_ids: list[int]):
        self.token_ids = torch.tensor(token_ids)
        self.words: torch.Tensor | None = None
        self.handle = embedding.register_forward_hook(self)

    def __call__(self, module, inputs, output):
        if self.words is None:
            return output
        ids = inputs[0]
        match = (ids[..., None] == self.token_ids.to(ids.device)).to(output.dtype)  # (B, L, m)
        if not bool(match.any()):
            return output
        if self.words.shape[0] != ids.shape[0]:
            raise ValueError(f"{self.words.shape[0]} sets of pseudo-words for {ids.shape[0]} captions")
        return output * (1 - match.sum(-1, keepdim=True)) + match @ self.words.to(output.dtype)

    def remove(self) -> None:
        self.handle.remove()
