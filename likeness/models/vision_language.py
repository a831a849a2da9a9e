"""Vision-language models for the text-image metrics: CLIP, OWL-ViT / OWLv2, a BLIP VQA model, the LAION
aesthetic head. Loaded by hub id, local folder or tiny id, once per run, shared by every metric.

Each model plays a *role* (``clip`` for Stellar's CLIP-T/I/N, ``owlvit`` for GOA, ``vlm`` for RFS, ...). A
role's model id comes from, in order: an explicit override (the ``--clip-model`` style flags), the role's
environment variable (``LIKENESS_CLIP_MODEL`` ...), the papers' default. A model that cannot be found raises
:class:`VisionModelError`, whose message names the model, the metric that needs it and how to provide it.

The wrappers batch their inputs and return numpy arrays. They run on the device and in the dtype of the
runtime plan :class:`VisionModels` is given (default: the best device, float32: metrics are compared across
runs and machines); a metric's protocol records a dtype other than float32 (see ``VisionModels.runtime``).
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from likeness.models.loading import offline, pick_device
from likeness.models.runtime import _dtype_name  # the plan's dtype spellings


@dataclass(frozen=True)
class ModelRole:
    role: str
    default: str
    flag: str
    env: str
    used_for: str


ROLES: dict[str, ModelRole] = {r.role: r for r in (
    ModelRole("clip", "laion/CLIP-ViT-bigG-14-laion2B-39B-b160k", "--clip-model", "LIKENESS_CLIP_MODEL",
              "CLIP-T / CLIP-I / CLIP-N (Stellar)"),
    ModelRole("owlvit", "google/owlvit-large-patch14", "--owlvit-model", "LIKENESS_OWLVIT_MODEL", "GOA (Stellar)"),
    ModelRole("vlm", "Salesforce/blip-vqa-base", "--vlm-model", "LIKENESS_VLM_MODEL", "RFS (likeness' open definition)"),
    ModelRole("gen4gen-clip", "openai/clip-vit-base-patch32", "--gen4gen-clip-model", "LIKENESS_GEN4GEN_CLIP_MODEL",
              "CP-CLIP / TI-CLIP (Gen4Gen)"),
    ModelRole("gen4gen-owlvit", "google/owlvit-base-patch32", "--gen4gen-owlvit-model", "LIKENESS_GEN4GEN_OWLVIT_MODEL",
              "CP-CLIP boxes (Gen4Gen)"),
    ModelRole("pickscore", "yuvalkirstain/PickScore_v1", "--pickscore-model", "LIKENESS_PICKSCORE_MODEL", "PickScore"),
    ModelRole("aesthetic-clip", "openai/clip-vit-large-patch14", "--aesthetic-clip-model", "LIKENESS_AESTHETIC_CLIP_MODEL",
              "LAION aesthetic score (its CLIP ViT-L/14)"),
    ModelRole("aesthetic", "trl-lib/ddpo-aesthetic-predictor:aesthetic-model.pth", "--aesthetic-model",
              "LIKENESS_AESTHETIC_MODEL", "LAION aesthetic score (its MLP head: a .pth/.safetensors file or repo:file)"),
    ModelRole("hps", "xswu/HPSv2:HPS_v2.1_compressed.pt", "--hps-model", "LIKENESS_HPS_MODEL",
              "HPSv2 (its checkpoint: HPS_v2.1_compressed.pt / HPS_v2_compressed.pt, a file, folder or repo:file)"),
    ModelRole("hps-tokenizer", "laion/CLIP-ViT-H-14-laion2B-s32B-b79K", "--hps-tokenizer", "LIKENESS_HPS_TOKENIZER",
              "HPSv2's CLIP tokenizer (a folder or hub id with it)"),
    ModelRole("imagereward", "THUDM/ImageReward:ImageReward.pt", "--imagereward-model", "LIKENESS_IMAGEREWARD_MODEL",
              "ImageReward (its checkpoint ImageReward.pt: a file, folder or repo:file)"),
    ModelRole("imagereward-tokenizer", "google-bert/bert-base-uncased", "--imagereward-tokenizer",
              "LIKENESS_IMAGEREWARD_TOKENIZER", "ImageReward's tokenizer (bert-base-uncased: a folder or hub id)"),
    ModelRole("judge", "Qwen/Qwen2.5-VL-7B-Instruct", "--judge-model", "LIKENESS_JUDGE_MODEL",
              "judge-identity / judge-prompt / judge-overall (an open multimodal judge: Qwen2.5-VL or Qwen3-VL class)"),
)}
# A checkpoint-only model and the role of its tokenizer. A tiny id or a local folder holding a tokenizer
# (tokenizer_config.json) also serves as the tokenizer unless one is given.
TOKENIZER_ROLES = {"hps": "hps-tokenizer", "imagereward": "imagereward-tokenizer"}
# PickScore's hub repo holds the model only; its processor is the one of the CLIP it was fine-tuned from.
PICKSCORE_PROCESSOR = ("laion/CLIP-ViT-H-14-laion2B-s32B-b79K", "LIKENESS_PICKSCORE_PROCESSOR")


class VisionModelError(FileNotFoundError):
    """A metric's model is not available. The message says which, for what, and how to provide it."""

    def __init__(self, role: str, model_id: str, reason: str):
        self.role, self.model_id, self.reason = role, model_id, reason
        r = ROLES.get(role)
        local = model_id.startswith((".", "/", "~")) or model_id.count("/") != 1
        download = "" if local else (f", or download it once on a connected machine (`hf download "
                                     f"{' '.join(model_id.split(':', 1))}`) and keep HF_HOME pointing at that cache")
        how = (f"Provide it with {r.flag} PATH (a folder written by save_pretrained, or a hub id) or the environment "
               f"variable {r.env}=PATH{download}.") if r else ""
        need = f" ({r.used_for})" if r else ""
        super().__init__(f"model {model_id!r} for {role}{need} is not available: {reason}. {how}".strip())


def model_id_for(role: str, overrides: dict[str, str] | None = None) -> str:
    """Override > environment variable > the papers' default."""
    if role not in ROLES:
        raise KeyError(f"unknown model role {role!r}; known: {', '.join(ROLES)}")
    if overrides and overrides.get(role):
        return str(overrides[role])
    return os.environ.get(ROLES[role].env) or ROLES[role].default


def _tiny(model_id: str) -> Path | None:
    from likeness.models.tiny_vision import TINY_VISION_MODELS, tiny_vision_path

    return tiny_vision_path(model_id) if model_id in TINY_VISION_MODELS else None


def locally_available(model_id: str) -> bool:
    """True when loading needs no network: a tiny id, a local folder/file, or a hub id already in the cache."""
    if _is_tiny_id(model_id):
        return True
    repo, _, filename = model_id.partition(":")
    local = Path(repo).expanduser()
    if local.exists():
        return True
    if repo.count("/") != 1:
        return False
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(repo, filename or "config.json")
    return isinstance(found, str)


def _is_tiny_id(model_id: str) -> bool:
    from likeness.models.tiny_vision import TINY_VISION_MODELS

    return model_id in TINY_VISION_MODELS


def _source(role: str, model_id: str) -> str | Path:
    """A local folder, or the hub id (after checking its shape), for ``from_pretrained``."""
    from likeness.models.pretrained import pretrained_source

    return pretrained_source(model_id, error=lambda reason: VisionModelError(role, model_id, reason))


def _load(role: str, model_id: str, loader):
    """``loader(source, local_files_only)`` through the one offline check (:mod:`likeness.models.pretrained`)."""
    from likeness.models.pretrained import hub_failure

    source = _source(role, model_id)
    try:
        return loader(source, local_files_only=offline())
    except VisionModelError:
        raise
    except Exception as exc:  # hub / file errors come as several unrelated types
        raise VisionModelError(role, model_id, hub_failure(exc)) from None


def _batches(seq, size: int):
    for start in range(0, len(seq), size):
        yield seq[start:start + size]


def _normalise(x: torch.Tensor) -> np.ndarray:
    x = x.float()
    return (x / x.norm(dim=-1, keepdim=True)).cpu().numpy()


def _pooled(output) -> torch.Tensor:
    """transformers 5 returns a model output with the projected embedding as ``pooler_output``; 4.x a tensor."""
    return output if isinstance(output, torch.Tensor) else output.pooler_output


# --------------------------------------------------------------------------------------------------------
# CLIP
# --------------------------------------------------------------------------------------------------------


class ClipModel:
    """A CLIP image/text encoder: L2-normalised embeddings, batched, texts truncated to the encoder limit."""

    def __init__(self, role: str, model_id: str, model, processor, device: torch.device, batch_size: int = 16):
        self.role, self.model_id, self.model, self.processor = role, model_id, model, processor
        self.device, self.batch_size = device, batch_size
        self.tokenizer = processor.tokenizer
        self.max_tokens = int(min(getattr(self.tokenizer, "model_max_length", 77) or 77,
                                  model.config.text_config.max_position_embeddings))
        self.image_calls = 0  # forward passes, for the benchmark and the "encoded once" tests
        self.images_encoded = 0

    @property
    def logit_scale(self) -> float:
        return float(self.model.logit_scale.exp().item())

    @torch.no_grad()
    def encode_images(self, images: list) -> np.ndarray:
        out = []
        for chunk in _batches(list(images), self.batch_size):
            pixels = self.processor.image_processor(images=chunk, return_tensors="pt")["pixel_values"].to(self.device)
            pixels = pixels.to(self.model.dtype)
            out.append(_normalise(_pooled(self.model.get_image_features(pixel_values=pixels))))
            self.image_calls += 1
            self.images_encoded += len(chunk)
        dim = self.model.config.projection_dim
        return np.concatenate(out) if out else np.zeros((0, dim), np.float32)

    def token_count(self, text: str) -> int:
        return len(self.tokenizer(text, truncation=False)["input_ids"])

    @torch.no_grad()
    def encode_texts(self, texts: list[str]) -> tuple[np.ndarray, list[bool]]:
        """Embeddings and, per text, whether it was longer than the encoder's limit (and so truncated)."""
        truncated = [self.token_count(t) > self.max_tokens for t in texts]
        out = []
        for chunk in _batches(list(texts), self.batch_size):
            tokens = self.tokenizer(chunk, padding="max_length", truncation=True, max_length=self.max_tokens,
                                    return_tensors="pt").to(self.device)
            out.append(_normalise(_pooled(self.model.get_text_features(input_ids=tokens["input_ids"],
                                                                       attention_mask=tokens["attention_mask"]))))
        dim = self.model.config.projection_dim
        return (np.concatenate(out) if out else np.zeros((0, dim), np.float32)), truncated


def load_clip(role: str, model_id: str, device=None, batch_size: int = 16, dtype=None) -> ClipModel:
    from transformers import AutoProcessor, CLIPModel

    torch_device = pick_device(device)
    torch_dtype = getattr(torch, str(dtype).replace("torch.", "")) if dtype is not None else torch.float32

    def loader(source, local_files_only):
        model = CLIPModel.from_pretrained(source, local_files_only=local_files_only, dtype=torch_dtype)
        try:
            processor = AutoProcessor.from_pretrained(source, local_files_only=local_files_only)
        except Exception:
            if role != "pickscore":
                raise
            # PickScore's repo has no processor: it is the one of the CLIP-H it was fine-tuned from.
            fallback = os.environ.get(PICKSCORE_PROCESSOR[1]) or PICKSCORE_PROCESSOR[0]
            processor = AutoProcessor.from_pretrained(fallback, local_files_only=local_files_only)
        return model, processor

    model, processor = _load(role, model_id, loader)
    return ClipModel(role, model_id, model.to(torch_device).eval(), processor, torch_device, batch_size)


load_clip.takes_dtype = True  # VisionModels passes its dtype (None: float32)


# --------------------------------------------------------------------------------------------------------
# OWL-ViT / OWLv2
# --------------------------------------------------------------------------------------------------------


@dataclass
class Detections:
    """Every predicted box of one image against its queries: ``scores`` (boxes x queries, sigmoid of the
    logits), ``boxes`` (x0, y0, x1, y1 in the original image's pixels) and the ``logits`` themselves (a box's
    best query is chosen on them: in float32 the sigmoid of large logits rounds to a tie at 1.0)."""

    queries: list[str]
    scores: np.ndarray
    boxes: np.ndarray
    logits: np.ndarray | None = None


class OwlDetector:
    def __init__(self, role: str, model_id: str, model, processor, device: torch.device, batch_size: int = 8):
        self.role, self.model_id, self.model, self.processor = role, model_id, model, processor
        self.device, self.batch_size = device, batch_size
        self.padded_square = model.config.model_type == "owlv2"  # OWLv2 pads to a square before resizing

    @torch.no_grad()
    def detect(self, images: list, queries: list[list[str]]) -> list[Detections]:
        """One forward per batch of images; each image has its own queries (padded within the batch; OWL-ViT's
        logits are per (box, query), so padding queries never changes the real ones)."""
        results: list[Detections] = []
        pairs = list(zip(images, queries))
        for chunk in _batches(pairs, self.batch_size):
            width = max(len(q) for _, q in chunk)
            texts = [list(q) + [" "] * (width - len(q)) for _, q in chunk]
            inputs = self.processor(text=texts, images=[im for im, _ in chunk], return_tensors="pt", truncation=True)
            inputs = {k: v.to(self.device) for k, v in inputs.items()}
            out = self.model(**inputs)
            logits = out.logits.float()
            scores, logits = torch.sigmoid(logits).cpu().numpy(), logits.cpu().numpy()
            boxes = out.pred_boxes.float().cpu().numpy()  # (cx, cy, w, h), normalised
            for k, (image, q) in enumerate(chunk):
                w, h = image.size
                sx, sy = (max(w, h), max(w, h)) if self.padded_square else (w, h)
                cx, cy, bw, bh = boxes[k].T
                xyxy = np.stack([(cx - bw / 2) * sx, (cy - bh / 2) * sy, (cx + bw / 2) * sx, (cy + bh / 2) * sy], axis=1)
                xyxy = np.clip(xyxy, 0, [w, h, w, h])
                results.append(Detections(list(q), scores[k][:, :len(q)], xyxy, logits[k][:, :len(q)]))
        return results


def load_detector(role: str, model_id: str, device=None, batch_size: int = 8) -> OwlDetector:
    from transformers import AutoModelForZeroShotObjectDetection, AutoProcessor

    torch_device = pick_device(device)

    def loader(source, local_files_only):
        model = AutoModelForZeroShotObjectDetection.from_pretrained(source, local_files_only=local_files_only, dtype=torch.float32)
        return model, AutoProcessor.from_pretrained(source, local_files_only=local_files_only)

    model, processor = _load(role, model_id, loader)
    return OwlDetector(role, model_id, model.to(torch_device).eval(), processor, torch_device, batch_size)


# --------------------------------------------------------------------------------------------------------
# VQA (RFS)
# --------------------------------------------------------------------------------------------------------


class YesNoVQA:
    """P(yes) for yes/no questions about an image, from a BLIP VQA model: the answer decoder's first-token
    logits restricted to the tokens "yes" and "no", softmaxed."""

    def __init__(self, role: str, model_id: str, model, processor, device: torch.device, batch_size: int = 16):
        self.role, self.model_id, self.model, self.processor = role, model_id, model, processor
        self.device, self.batch_size = device, batch_size
        tok = processor.tokenizer
        self.yes_id, self.no_id = tok.convert_tokens_to_ids("yes"), tok.convert_tokens_to_ids("no")
        if tok.unk_token_id in (self.yes_id, self.no_id):
            raise VisionModelError(role, model_id, "its tokenizer has no single token for 'yes' and 'no'")

    @torch.no_grad()
    def yes_probability(self, images: list, questions: list[list[str]]) -> list[np.ndarray]:
        """Per image, P(yes) for each of its questions. Each image is encoded once, whatever its question count."""
        results: list[np.ndarray] = []
        for chunk in _batches(list(zip(images, questions)), self.batch_size):
            pixels = self.processor.image_processor(images=[im for im, _ in chunk], return_tensors="pt")["pixel_values"]
            image_embeds = self.model.vision_model(pixel_values=pixels.to(self.device)).last_hidden_state
            rows = [k for k, (_, q) in enumerate(chunk) for _ in q]
            flat = [text for _, q in chunk for text in q]
            if not flat:
                results.extend(np.zeros(0) for _ in chunk)
                continue
            tokens = self.processor.tokenizer(flat, padding=True, return_tensors="pt").to(self.device)
            embeds = image_embeds[rows]
            image_mask = torch.ones(embeds.shape[:-1], dtype=torch.long, device=self.device)
            question = self.model.text_encoder(input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"],
                                               encoder_hidden_states=embeds, encoder_attention_mask=image_mask)[0]
            # The answer decoder does not mask padded question tokens out of its cross-attention (measured: 2e-3
            # logit drift), so questions of equal length are decoded together, cut to their true length.
            lengths = tokens["attention_mask"].sum(dim=1)
            logits = torch.empty(len(flat), self.model.config.text_config.vocab_size, device=self.device)
            for length in torch.unique(lengths).tolist():
                rows_l = (lengths == length).nonzero(as_tuple=True)[0]
                bos = torch.full((len(rows_l), 1), self.model.decoder_start_token_id, device=self.device)
                logits[rows_l] = self.model.text_decoder(
                    input_ids=bos, encoder_hidden_states=question[rows_l, :length],
                    encoder_attention_mask=tokens["attention_mask"][rows_l, :length]).logits[:, 0, :].float()
            pair = torch.softmax(logits[:, [self.yes_id, self.no_id]], dim=-1)[:, 0].cpu().numpy()
            start = 0
            for _, q in chunk:
                results.append(pair[start:start + len(q)])
                start += len(q)
        return results


def load_vqa(role: str, model_id: str, device=None, batch_size: int = 16) -> YesNoVQA:
    from transformers import AutoConfig, AutoProcessor, BlipForQuestionAnswering

    torch_device = pick_device(device)

    def loader(source, local_files_only):
        config = AutoConfig.from_pretrained(source, local_files_only=local_files_only)
        if config.model_type != "blip":
            raise VisionModelError(role, model_id, f"RFS needs a BLIP VQA model (model_type blip), not {config.model_type!r}")
        model = BlipForQuestionAnswering.from_pretrained(source, local_files_only=local_files_only, dtype=torch.float32)
        return model, AutoProcessor.from_pretrained(source, local_files_only=local_files_only)

    model, processor = _load(role, model_id, loader)
    return YesNoVQA(role, model_id, model.to(torch_device).eval(), processor, torch_device, batch_size)


# --------------------------------------------------------------------------------------------------------
# LAION aesthetic head
# --------------------------------------------------------------------------------------------------------

# The LAION "improved aesthetic predictor" MLP: the Linear layers sit at these indices of its nn.Sequential
# (Dropouts in between), so its state dict has keys layers.{0,2,4,6,7}.{weight,bias}.
from likeness.models.tiny_vision import AESTHETIC_LINEAR_KEYS  # noqa: E402  (the published layer layout)


class AestheticHead(torch.nn.Module):
    """Linear layers of the LAION predictor (dropout is inactive at inference); sizes come from the weights."""

    def __init__(self, sizes: list[tuple[int, int]]):
        super().__init__()
        self.linears = torch.nn.ModuleList(torch.nn.Linear(i, o) for i, o in sizes)

    def forward(self, x):
        for layer in self.linears:
            x = layer(x)
        return x

    @classmethod
    def from_state_dict(cls, state: dict) -> "AestheticHead":
        try:
            weights = [state[f"layers.{k}.weight"] for k in AESTHETIC_LINEAR_KEYS]
        except KeyError as exc:
            raise ValueError(f"not a LAION aesthetic predictor state dict (missing {exc.args[0]})") from None
        head = cls([(w.shape[1], w.shape[0]) for w in weights])
        for layer, k in zip(head.linears, AESTHETIC_LINEAR_KEYS):
            layer.weight.data.copy_(state[f"layers.{k}.weight"])
            layer.bias.data.copy_(state[f"layers.{k}.bias"])
        return head.eval()


def load_aesthetic_head(role: str, model_id: str, device=None) -> AestheticHead:
    """``model_id`` is a file (.pth or .safetensors), a tiny id, or ``owner/repo:filename`` on the hub."""
    tiny = _tiny(model_id)
    repo, _, filename = model_id.partition(":")
    path = tiny if tiny is not None else Path(repo).expanduser()
    if tiny is None and not path.exists():
        if repo.count("/") != 1 or not filename:
            raise VisionModelError(role, model_id, "no such file, and it is not of the form owner/repo:filename")
        from likeness.models.pretrained import hub_file

        path = hub_file(repo, filename, error=lambda reason: VisionModelError(role, model_id, reason))
    if path.is_dir():
        candidates = sorted(path.glob("*.safetensors")) + sorted(path.glob("*.pth"))
        if not candidates:
            raise VisionModelError(role, model_id, f"{path} holds no .safetensors or .pth file")
        path = candidates[0]
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)  # never unpickle arbitrary objects
        head = AestheticHead.from_state_dict(state)
    except Exception as exc:
        raise VisionModelError(role, model_id, f"{path}: {type(exc).__name__}: {exc}") from None
    return head.to(pick_device(device))


# --------------------------------------------------------------------------------------------------------
# The shared set of models of one run
# --------------------------------------------------------------------------------------------------------

LOADERS = {"clip": load_clip, "gen4gen-clip": load_clip, "pickscore": load_clip, "aesthetic-clip": load_clip,
           "owlvit": load_detector, "gen4gen-owlvit": load_detector, "vlm": load_vqa, "aesthetic": load_aesthetic_head}
# HPSv2 / ImageReward add theirs when likeness.models.reward_models is imported (it builds on this module).


def bundled_tokenizer(model_id: str) -> str | None:
    """A tiny id, or the local checkpoint folder when it also holds a tokenizer, else None."""
    if _is_tiny_id(model_id):
        return model_id  # its folder holds the tokenizer; the id keeps protocol names machine-independent
    folder = Path(model_id.partition(":")[0]).expanduser()
    if folder.is_file():
        folder = folder.parent
    return str(folder) if (folder / "tokenizer_config.json").is_file() else None


class VisionModels:
    """The models of one evaluation: each role loads once, on first use, and every metric shares it. A role
    whose model is missing raises the same :class:`VisionModelError` every time it is asked for (loaded once,
    failed once)."""

    def __init__(self, overrides: dict[str, str] | None = None, device=None, batch_size: int = 16, dtype=None,
                 plan=None):
        self.overrides = {k: v for k, v in (overrides or {}).items() if v}
        if plan is not None:  # a runtime plan (likeness.models.runtime): its device and dtype
            device, dtype = device or plan.device, dtype or plan.dtype
        self.device, self.batch_size = device, batch_size
        # For loaders that take one, in the plan's spelling ("bf16" -> "bfloat16"; an unknown name is a PlanError
        # naming it); None: each loader's default.
        self.dtype = None if dtype in (None, "auto") else _dtype_name(dtype)
        self._loaded: dict[str, object] = {}
        self._errors: dict[str, VisionModelError] = {}
        self.loads: Counter = Counter()

    def model_id(self, role: str) -> str:
        paired = next((m for m, t in TOKENIZER_ROLES.items() if t == role), None)
        if paired and not self.overrides.get(role) and not os.environ.get(ROLES[role].env):
            bundled = bundled_tokenizer(self.model_id(paired))
            if bundled:
                return bundled
        return model_id_for(role, self.overrides)

    def available(self, role: str) -> bool:
        """Loadable without the network (for choosing bench's default metrics)."""
        return role in self._loaded or (role not in self._errors and locally_available(self.model_id(role)))

    def get(self, role: str):
        if role in self._loaded:
            return self._loaded[role]
        if role in self._errors:
            raise self._errors[role]
        model_id = self.model_id(role)
        kwargs = {} if role == "aesthetic" else {"batch_size": self.batch_size}
        try:
            if role in TOKENIZER_ROLES:  # called by the loader once the checkpoint is found, so its error comes first
                kwargs["tokenizer"] = lambda: self.get(TOKENIZER_ROLES[role])
            if role not in LOADERS:
                raise VisionModelError(role, model_id, "its loader is not registered (import likeness.models.reward_models)")
            if getattr(LOADERS[role], "takes_dtype", False):  # the others stay float32 (and so does the protocol)
                kwargs["dtype"] = self.dtype
            model = LOADERS[role](role, model_id, device=self.device, **kwargs)
        except VisionModelError as exc:
            self._errors[role] = exc
            raise
        self.loads[role] += 1
        self._loaded[role] = model
        return model

    def runtime(self, roles) -> dict:
        """What of the runtime can change the numbers of ``roles``' models (for a metric's protocol): the dtype
        of each role loaded in half precision; empty in the default float32."""
        out = {}
        for role in roles:
            loader = LOADERS.get(role)
            if not getattr(loader, "takes_dtype", False):
                continue
            # A loader whose default is not float32 (the judge: half on GPUs) says which dtype it will pick.
            resolve = getattr(loader, "resolved_dtype", None)
            dtype = resolve(self.device, self.dtype) if resolve is not None else self.dtype
            name = str(dtype).replace("torch.", "") if dtype is not None else "float32"
            if name != "float32":
                out[role] = name
        return out

    def error(self, role: str) -> VisionModelError | None:
        """The load error of ``role`` (trying to load it once), or None when it is usable."""
        try:
            self.get(role)
        except VisionModelError as exc:
            return exc
        return None
