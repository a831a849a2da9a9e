"""The rectified-flow training objective of FLUX.1, FLUX.2, SD3.5 and Qwen-Image, as a ``loss_fn`` for the shared loop
(:func:`likeness.methods.training.train`).

For a clean latent ``x0`` and noise ``n``, a noise level ``sigma`` in (0, 1) is drawn, ``x_sigma = (1 - sigma) x0 +
sigma n``, and the transformer predicts the velocity ``n - x0`` (what the pipelines' Euler sampler integrates).
The loss is ``w(sigma) * |v_pred - (n - x0)|^2``, averaged per sample (inside the mask when there is one), with
prior preservation weighed like the UNet loss.

Where sigma comes from and how it is weighted are the choices diffusers' FLUX / SD3 DreamBooth scripts offer,
computed by the same helpers (``diffusers.training_utils``):

- ``weighting_scheme``: ``none`` (uniform u, weight 1; the FLUX scripts' default), ``logit_normal`` (u = sigmoid of
  a normal draw with ``logit_mean`` / ``logit_std``; SD3's default), ``mode`` (``mode_scale``), ``sigma_sqrt``
  (uniform u, weight 1/sigma^2) and ``cosmap`` (uniform u, weight 2 / (pi (1 - 2 sigma + 2 sigma^2))).
- u becomes sigma through the base model's scheduler shift (``shift * u / (1 + (shift - 1) u)``) when the
  scheduler uses a fixed shift (SD3.5: 3.0); the resolution-dependent shift of FLUX / Qwen-Image at sampling time
  is left out in training, as the diffusers scripts do (they index the unshifted sigmas of such schedulers).
- FLUX.1 [dev]'s distilled guidance embedding is fed ``train_guidance`` (diffusers' script default 3.5, and
  FLUX.1's sampling default).

Each family packs latents and encodes captions its own way; :func:`velocity` does it exactly as the family's
pipeline does at sampling time (same helpers of the pipeline class), so a LoRA trained here acts at sampling.
"""

from __future__ import annotations

import torch

from likeness.methods.training import Batch, masked_mse

WEIGHTING_SCHEMES = ("none", "sigma_sqrt", "logit_normal", "mode", "cosmap")


def sample_sigmas(pipe, batch_size: int, generator: torch.Generator, *, weighting_scheme: str = "none",
                  logit_mean: float = 0.0, logit_std: float = 1.0, mode_scale: float = 1.29) -> torch.Tensor:
    """Noise levels in (0, 1) for one batch, drawn on the CPU from ``generator`` (exact on resume)."""
    from diffusers.training_utils import compute_density_for_timestep_sampling

    if weighting_scheme not in WEIGHTING_SCHEMES:
        raise ValueError(f"weighting_scheme {weighting_scheme!r} is not one of {', '.join(WEIGHTING_SCHEMES)}")
    u = compute_density_for_timestep_sampling(weighting_scheme, batch_size, logit_mean=logit_mean, logit_std=logit_std,
                                              mode_scale=mode_scale, device="cpu", generator=generator)
    # The scripts pick one of 1000 discrete training sigmas; the same grid here.
    u = ((u * 1000).long().clamp(0, 999) + 1).float() / 1000
    config = pipe.scheduler.config
    shift = float(config.get("shift", 1.0))
    if not config.get("use_dynamic_shifting", False) and shift != 1.0:
        u = shift * u / (1 + (shift - 1) * u)
    return u


def _encode_latents(pipe, pixels: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Clean latents in the layout the family's sampler integrates (B x C x h x w)."""
    vae = pipe.vae
    family = pipe.likeness_info.family
    pixels = pixels.to(vae.device, vae.dtype)
    with torch.no_grad(), torch.autocast(vae.device.type, enabled=False):  # the VAE in its own (float32) dtype
        if family == "qwen-image":
            latents = vae.encode(pixels[:, :, None]).latent_dist.sample(generator=generator).float()[:, :, 0]
            mean = torch.tensor(vae.config.latents_mean).view(1, -1, 1, 1).to(latents)
            std = torch.tensor(vae.config.latents_std).view(1, -1, 1, 1).to(latents)
            return (latents - mean) / std
        latents = vae.encode(pixels).latent_dist.sample(generator=generator).float()
        if family == "flux2":
            latents = type(pipe)._patchify_latents(latents)
            mean = vae.bn.running_mean.view(1, -1, 1, 1).to(latents)
            std = torch.sqrt(vae.bn.running_var.view(1, -1, 1, 1) + vae.config.batch_norm_eps).to(latents)
            return (latents - mean) / std
        shift = getattr(vae.config, "shift_factor", None) or 0.0
        return (latents - shift) * vae.config.scaling_factor


def velocity(pipe, noisy: torch.Tensor, sigmas: torch.Tensor, captions: list[str], *, train_guidance: float = 3.5) -> torch.Tensor:
    """The transformer's velocity prediction for ``noisy`` latents (B x C x h x w) at ``sigmas``, with the captions
    encoded as the pipeline encodes prompts (gradients flow into text-encoder LoRA)."""
    family = pipe.likeness_info.family
    transformer = pipe.transformer
    device, dtype = transformer.device, transformer.dtype
    b, c, h, w = noisy.shape
    sigmas = sigmas.to(device)
    x = noisy.to(device, dtype)
    if family == "flux1":
        cls = type(pipe)
        embeds, pooled, text_ids = pipe.encode_prompt(captions, prompt_2=None, device=device)
        packed = cls._pack_latents(x, b, c, h, w)
        img_ids = cls._prepare_latent_image_ids(b, h // 2, w // 2, device, dtype)
        guidance = torch.full((b,), float(train_guidance), device=device) if transformer.config.guidance_embeds else None
        out = transformer(hidden_states=packed, timestep=sigmas.to(dtype), guidance=guidance, pooled_projections=pooled.to(dtype),
                          encoder_hidden_states=embeds.to(dtype), txt_ids=text_ids, img_ids=img_ids, return_dict=False)[0]
        scale = pipe.vae_scale_factor
        return cls._unpack_latents(out, h * scale, w * scale, scale).float()
    if family == "sd3":
        embeds, _, pooled, _ = pipe.encode_prompt(prompt=captions, prompt_2=None, prompt_3=None, device=device,
                                                  do_classifier_free_guidance=False)
        return transformer(hidden_states=x, timestep=(sigmas * 1000).to(dtype), encoder_hidden_states=embeds.to(dtype),
                           pooled_projections=pooled.to(dtype), return_dict=False)[0].float()
    if family == "flux2":
        cls = type(pipe)
        embeds, text_ids = pipe.encode_prompt(prompt=captions, device=device)
        ids = cls._prepare_latent_ids(x).to(device)
        guidance = torch.full((b,), float(train_guidance), device=device) if transformer.config.guidance_embeds else None
        out = transformer(hidden_states=cls._pack_latents(x), timestep=sigmas.to(dtype), guidance=guidance,
                          encoder_hidden_states=embeds.to(dtype), txt_ids=text_ids, img_ids=ids, return_dict=False)[0]
        return out.permute(0, 2, 1).reshape(b, c, h, w).float()
    if family == "qwen-image":
        cls = type(pipe)
        embeds, mask = pipe.encode_prompt(captions, device=device)
        out = transformer(hidden_states=cls._pack_latents(x, b, c, h, w), timestep=sigmas.to(dtype), guidance=None,
                          encoder_hidden_states_mask=mask, encoder_hidden_states=embeds.to(dtype),
                          img_shapes=[[(1, h // 2, w // 2)]] * b, return_dict=False)[0]
        scale = pipe.vae_scale_factor
        return cls._unpack_latents(out, h * scale, w * scale, scale)[:, :, 0].float()
    raise ValueError(f"flow-matching training does not know family {family!r}")


def flow_matching_loss(pipe, noise_scheduler, batch: Batch, generator: torch.Generator, *, prior_loss_weight: float = 1.0,
                       identity=None, weighting_scheme: str = "none", logit_mean: float = 0.0, logit_std: float = 1.0,
                       mode_scale: float = 1.29, train_guidance: float = 3.5):
    """The loss of one batch (same signature as :func:`likeness.methods.training.diffusion_loss`; the loop passes its
    DDPM scheduler, unused here). The face-identity term is not available on these families yet."""
    from diffusers.training_utils import compute_loss_weighting_for_sd3

    if identity is not None and identity.weight:
        raise ValueError("id_loss_weight is not supported on flow-matching base models yet; use id_loss_weight=0")
    latents = _encode_latents(pipe, batch.pixels, generator)
    noise = torch.randn(latents.shape, generator=generator)
    sigmas = sample_sigmas(pipe, latents.shape[0], generator, weighting_scheme=weighting_scheme, logit_mean=logit_mean,
                           logit_std=logit_std, mode_scale=mode_scale)
    s = sigmas.view(-1, 1, 1, 1)
    noisy = (1.0 - s) * latents + s * noise
    pred = velocity(pipe, noisy, sigmas, list(batch.captions), train_guidance=train_guidance)
    target = (noise - latents).to(pred.device)
    weights = compute_loss_weighting_for_sd3(weighting_scheme, sigmas).float().to(pred.device)
    per_sample = weights * masked_mse(pred, target, batch.mask)
    if batch.prior is None or not bool(batch.prior.any()):
        return per_sample.mean()
    prior = batch.prior.to(per_sample.device)
    return per_sample[~prior].mean() + prior_loss_weight * per_sample[prior].mean()


def check_weighting(scheme: str) -> str:
    if scheme not in WEIGHTING_SCHEMES:
        raise ValueError(f"weighting_scheme {scheme!r} is not one of {', '.join(WEIGHTING_SCHEMES)}")
    return scheme


__all__ = ["WEIGHTING_SCHEMES", "flow_matching_loss", "sample_sigmas", "velocity", "check_weighting"]
