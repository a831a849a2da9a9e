"""One accelerate training loop for every method, and the diffusion objective they share.

Methods only decide *what* trains (a dict of parameters), *what a batch is* (a function of the
step number) and what to do after each optimizer step (e.g. Textual Inversion puts back the
frozen token rows). Everything else lives here once:

- The device and the precision come from the process's :class:`~likeness.models.runtime.RuntimePlan`
  (``--device``, ``--mixed-precision``): the frozen UNet and text encoders are cast to the training dtype,
  the trained tensors stay float32 (stable updates) and the VAE stays float32 (its encode, and the identity
  loss's decode, overflow in float16; diffusers' training scripts do the same). Mixed precision is
  ``torch.autocast`` on the plan's device (a gradient scaler for fp16), not accelerate's process-wide
  setting, so one process can train in one precision and then another (the demo, the API).
- Under ``accelerate launch`` (several processes) the gradients and logged losses are averaged over the
  process group accelerate's ``PartialState`` joined, which is what DDP would do.
- Randomness is a pure function of ``(seed, step, micro-step)``: batches, noise and timesteps are
  drawn from generators seeded with those numbers. A run resumed from a checkpoint therefore
  replays exactly what the uninterrupted run would have done.
- Checkpoints every N steps hold the trainable tensors, optimizer and LR-scheduler state, the step,
  the loss history and a hash of the configuration. A rerun into the same folder resumes from the
  latest one; a rerun with a different configuration is refused rather than silently mixed.
- The loss curve is written as ``loss.csv`` and ``loss.png`` next to the artifact.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

log = logging.getLogger(__name__)


@dataclass
class TrainingConfig:
    max_steps: int = 500
    learning_rate: float = 1e-4
    # Multiply the rate by batch size x accumulation x processes (the Textual Inversion convention).
    scale_lr: bool = False
    batch_size: int = 1
    gradient_accumulation_steps: int = 1
    lr_scheduler: str = "constant"
    lr_warmup_steps: int = 0
    adam_weight_decay: float = 1e-2
    max_grad_norm: float = 1.0
    mixed_precision: str = "auto"  # auto = the runtime plan's (follows --dtype: none on CPU, bf16/fp16 on GPUs); or no/fp16/bf16
    gradient_checkpointing: bool = False
    checkpoint_every: int = 0  # 0 = no intermediate checkpoints
    checkpoints_to_keep: int = 2
    seed: int = 0
    resolution: int | None = None  # None = the base model's native size
    masked_loss: str | None = None  # None, "person" or "face": MSE only inside that mask
    progress: bool = True

    def fingerprint(self, extra: dict | None = None) -> str:
        """What must match for a checkpoint to be resumed (cosmetic fields excluded)."""
        record = {k: v for k, v in asdict(self).items() if k not in ("progress", "checkpoint_every", "checkpoints_to_keep")}
        record.update(extra or {})
        return hashlib.sha256(json.dumps(record, sort_keys=True, default=str).encode()).hexdigest()[:16]


class ResumeMismatchError(RuntimeError):
    """A checkpoint exists in the output folder but was made with a different configuration."""


@dataclass
class Batch:
    pixels: torch.Tensor  # B x 3 x H x W in [-1, 1]
    captions: list[str]
    mask: torch.Tensor | None = None  # B x 1 x H x W in {0, 1}, for masked losses
    prior: torch.Tensor | None = None  # B bool: class (prior-preservation) images
    points: torch.Tensor | None = None  # B x 5 x 2: the face's 5 points in pixel coordinates (identity loss)
    identities: list[str] | None = None  # whose photo each sample is (identity loss references)


@dataclass
class IdentityTerm:
    """The optional face-identity loss added to the diffusion loss (``--option id_loss_weight=...``).

    On the model's predicted clean latent (x0 from the predicted noise / velocity), decoded by the
    VAE with gradients, ``loss`` (a :class:`likeness.faces.identity_loss.IdentityLoss`) compares the
    face at the batch's known 5 points with the person's reference embedding. Samples whose
    augmented face is too small for a chip (e.g. Celeb Basis' shrink-and-paste) or that have no
    person (class images) are left out of this term, counted in ``skipped``.
    """

    loss: torch.nn.Module
    references: dict[str, torch.Tensor]  # identity name -> (D,) reference embedding
    weight: float
    skipped: int = 0
    used: int = 0
    values: list[float] = field(default_factory=list)


@dataclass
class TrainingResult:
    losses: list[float]
    steps: int
    resumed_from: int = 0
    out_dir: Path | None = None
    step_seconds: list[float] = field(default_factory=list)  # wall time of each step run in this call
    notes: list[str] = field(default_factory=list)


def with_prior(make_batch, class_pixels: Callable[[int], list[torch.Tensor]], class_captions: list[str]):
    """Prior preservation: append as many class images as instance images to every batch (random picks
    from the batch's ``rng``), flagged ``prior`` so :func:`diffusion_loss` weighs them with
    ``prior_loss_weight``. ``class_pixels(size)`` gives the class images at the batch's resolution (read
    once per size); ``class_captions[i]`` is image i's caption. Photo batches may carry a loss mask, face
    points and whose photo it is: class images get a full mask and no identity term."""
    cache: dict[int, list[torch.Tensor]] = {}

    def make(step, micro, rng):
        batch = make_batch(step, micro, rng)
        n, size = batch.pixels.shape[0], batch.pixels.shape[-1]
        if size not in cache:
            cache[size] = class_pixels(size)
        picks = [int(rng.integers(len(class_captions))) for _ in range(n)]
        mask = None if batch.mask is None else torch.cat([batch.mask, torch.ones_like(batch.mask)])
        points = None if batch.points is None else torch.cat([batch.points, torch.zeros_like(batch.points)])
        people = None if batch.identities is None else list(batch.identities) + [""] * n
        return Batch(pixels=torch.cat([batch.pixels, torch.stack([cache[size][i] for i in picks])]),
                     captions=list(batch.captions) + [class_captions[i] for i in picks], mask=mask,
                     prior=torch.tensor([False] * n + [True] * n), points=points, identities=people)

    return make


def native_resolution(pipe) -> int:
    from likeness.models.families import native_resolution as native

    return native(pipe)


def _pipeline_modules(pipe) -> list[torch.nn.Module]:
    """VAE, denoiser (UNet or transformer) and text encoders: what the loop moves and casts."""
    from likeness.models.families import denoiser, text_encoders

    return [pipe.vae, denoiser(pipe), *text_encoders(pipe)]


def step_generator(seed: int, step: int, micro: int, stream: int) -> torch.Generator:
    """A CPU generator whose state depends only on its arguments (what makes resume exact)."""
    return torch.Generator("cpu").manual_seed(int(np.random.SeedSequence([seed, step, micro, stream]).generate_state(1)[0]))


def step_rng(seed: int, step: int, micro: int) -> np.random.Generator:
    return np.random.default_rng([seed, step, micro, 7])


def is_sdxl(pipe) -> bool:
    return getattr(pipe, "text_encoder_2", None) is not None


def encode_captions(pipe, captions: list[str], device) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Caption embeddings exactly as the pipeline builds them at inference (with gradients).

    SD 1.x/2.x: the text encoder's last hidden state. SDXL: the penultimate hidden states of both
    encoders concatenated, plus the second encoder's pooled projection. Textual-inversion tokens
    with several vectors are expanded the way ``load_textual_inversion`` expects.
    """
    pairs = [(pipe.tokenizer, pipe.text_encoder)]
    if is_sdxl(pipe):
        pairs.append((pipe.tokenizer_2, pipe.text_encoder_2))
    embeds, pooled = [], None
    for tokenizer, encoder in pairs:
        texts = [pipe.maybe_convert_prompt(c, tokenizer) for c in captions] if hasattr(pipe, "maybe_convert_prompt") else captions
        ids = tokenizer(texts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                        return_tensors="pt").input_ids.to(device)
        if is_sdxl(pipe):
            out = encoder(ids, output_hidden_states=True)
            embeds.append(out.hidden_states[-2])
            if encoder is pipe.text_encoder_2:
                pooled = out[0]
        else:
            embeds.append(encoder(ids)[0])
    return torch.cat(embeds, dim=-1), pooled


def masked_mse(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Per-sample mean squared error over the pixels inside ``mask`` (B x 1 x H x W, any resolution:
    area-resized to the latent grid, so a latent cell half inside counts half). No mask: the plain mean."""
    error = (pred - target) ** 2
    if mask is None:
        return error.mean(dim=(1, 2, 3))
    mask = F.interpolate(mask.to(error.device).float(), size=error.shape[-2:], mode="area")
    return (error * mask).sum(dim=(1, 2, 3)) / (mask.sum(dim=(1, 2, 3)) * error.shape[1]).clamp(min=1.0)


def build_identity_term(prepared: dict, weight: float, embedder: str = "dlib", weights=None, device=None) -> IdentityTerm:
    """The identity term for ``prepared`` photos (``{name: [PreparedPhoto]}``): each person's reference is the
    normalised mean embedding of their prepared (un-augmented) crops, taken the same way as in training."""
    from likeness.faces.identity_loss import build_identity_loss

    weight = float(weight)
    if not weight > 0:
        raise ValueError(f"id_loss_weight must be a positive number, got {weight}")
    kwargs = {"weights": weights} if embedder == "arcface" else ({"path": weights} if weights else {})
    loss = build_identity_loss(embedder, device=device, **kwargs)
    references = {}
    with torch.no_grad():
        for name, photos in prepared.items():
            vectors = []
            for photo in photos:
                if photo.landmarks is None:
                    raise ValueError(f"{photo.source}: the face backend gave no 5 points; the identity loss needs them")
                pixels = torch.from_numpy(np.asarray(photo.image.convert("RGB"), dtype=np.float32) / 127.5 - 1.0)
                image = pixels.permute(2, 0, 1)[None].to(device)
                vectors.append(loss.embed(image, torch.from_numpy(photo.landmarks)[None])[0])
            references[name] = F.normalize(torch.stack(vectors).mean(0), dim=0)
    return IdentityTerm(loss=loss, references=references, weight=weight)


def predicted_x0(noise_scheduler, noisy: torch.Tensor, pred: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
    """The clean latent the model's prediction implies (epsilon or v parameterisation)."""
    alphas = noise_scheduler.alphas_cumprod.to(noisy.device, torch.float32)[timesteps].view(-1, 1, 1, 1)
    if noise_scheduler.config.prediction_type == "v_prediction":
        return alphas.sqrt() * noisy - (1 - alphas).sqrt() * pred
    return (noisy - (1 - alphas).sqrt() * pred) / alphas.sqrt()


def identity_loss_term(pipe, term: IdentityTerm, batch: Batch, x0: torch.Tensor) -> torch.Tensor | None:
    """Mean identity loss over the usable samples of ``batch`` (decoded from ``x0`` with gradients), or None."""
    if batch.points is None or batch.identities is None:
        raise ValueError("the identity loss needs the face's 5 points in each batch (photo_batches provides them)")
    vae = pipe.vae
    height, width = batch.pixels.shape[-2:]
    keep = [i for i, name in enumerate(batch.identities)
            if name in term.references and (batch.prior is None or not bool(batch.prior[i]))
            and term.loss.usable(batch.points[i], height, width)]
    term.skipped += len(batch.identities) - len(keep)
    if not keep:
        return None
    term.used += len(keep)
    shift = getattr(vae.config, "shift_factor", None) or 0.0
    latents = x0[keep] / vae.config.scaling_factor + shift
    with torch.autocast(latents.device.type, enabled=False):  # float32 decode: half precision overflows in the SDXL VAE
        images = vae.decode(latents.to(next(vae.parameters()).dtype)).sample.float()
    reference = torch.stack([term.references[batch.identities[i]] for i in keep]).to(images.device)
    value = term.loss(images, batch.points[keep].to(images.device), reference).mean()
    term.values.append(float(value.detach()))
    return value


def diffusion_loss(pipe, noise_scheduler, batch: Batch, generator: torch.Generator, *, prior_loss_weight: float = 1.0,
                   identity: IdentityTerm | None = None):
    """The denoising MSE of Stable Diffusion training, optionally masked, with a prior-preservation term and a
    face-identity term."""
    unet, vae = pipe.unet, pipe.vae
    device = unet.device
    vae_dtype = next(vae.parameters()).dtype
    pixels = batch.pixels.to(device, vae_dtype)
    with torch.no_grad(), torch.autocast(device.type, enabled=False):  # the VAE runs in its own (float32) dtype
        latents = vae.encode(pixels).latent_dist.sample(generator=generator).float()
    shift = getattr(vae.config, "shift_factor", None) or 0.0
    latents = (latents - shift) * vae.config.scaling_factor
    noise = torch.randn(latents.shape, generator=generator).to(device)
    timesteps = torch.randint(0, noise_scheduler.config.num_train_timesteps, (latents.shape[0],), generator=generator).to(device)
    noisy = noise_scheduler.add_noise(latents, noise, timesteps)
    prompt_embeds, pooled = encode_captions(pipe, batch.captions, device)
    kwargs = {}
    if pooled is not None:
        size = pixels.shape[-1]
        # (original size, crop top-left, target size): an uncropped square image at training size.
        time_ids = torch.tensor([[size, size, 0, 0, size, size]], device=device, dtype=prompt_embeds.dtype)
        kwargs["added_cond_kwargs"] = {"text_embeds": pooled, "time_ids": time_ids.repeat(latents.shape[0], 1)}
    unet_dtype = next(unet.parameters()).dtype
    pred = unet(noisy.to(unet_dtype), timesteps, prompt_embeds.to(unet_dtype), **kwargs).sample.float()
    if noise_scheduler.config.prediction_type == "v_prediction":
        target = noise_scheduler.get_velocity(latents, noise, timesteps)
    else:
        target = noise
    per_sample = masked_mse(pred, target, batch.mask)
    extra = 0.0
    if identity is not None and identity.weight:
        term = identity_loss_term(pipe, identity, batch, predicted_x0(noise_scheduler, noisy.float(), pred, timesteps))
        if term is not None:
            extra = identity.weight * term
    if batch.prior is None or not bool(batch.prior.any()):
        return per_sample.mean() + extra
    prior = batch.prior.to(device)
    return per_sample[~prior].mean() + prior_loss_weight * per_sample[prior].mean() + extra


_NORMS = (torch.nn.LayerNorm, torch.nn.GroupNorm)


def cast_frozen(module: torch.nn.Module, device, dtype: torch.dtype) -> None:
    """``module`` on ``device`` in ``dtype``, its normalisation layers in float32. A float32 activation (e.g.
    from a trained float32 embedding row) meets these layers first; CPU kernels accept half inputs with float32
    norm weights but not the reverse ("mixed dtype (CPU)"), and float32 statistics are the safer choice anyway."""
    module.to(device, dtype=dtype)
    if dtype != torch.float32:
        for sub in module.modules():
            if isinstance(sub, _NORMS):
                sub.float()


class _Ranks:
    """The process group this process belongs to (accelerate's, under ``accelerate launch``), for averaging."""

    def __init__(self):
        from accelerate import PartialState

        self.state = PartialState()
        self.num_processes, self.process_index = self.state.num_processes, self.state.process_index
        self.is_main_process = self.state.is_main_process

    def mean(self, tensor: torch.Tensor) -> torch.Tensor:
        if self.num_processes == 1:
            return tensor
        import torch.distributed as dist

        # gloo (the bench's CPU group) reduces CPU tensors; NCCL reduces on the GPU.
        home = tensor.device if dist.get_backend() == "nccl" else torch.device("cpu")
        work = tensor.detach().to(home, torch.float32).clone()
        dist.all_reduce(work)
        return (work / self.num_processes).to(tensor.device, tensor.dtype)

    def wait_for_everyone(self) -> None:
        self.state.wait_for_everyone()


def training_plan(pipe, config: TrainingConfig, plan=None):
    """The runtime plan a training run follows: the caller's, else the one the pipeline was loaded with (unless
    ``config.mixed_precision`` asks for another precision), else the pipeline's device with that precision."""
    if plan is not None:
        return plan
    loaded = getattr(pipe, "likeness_plan", None)  # the plan load_pipeline followed
    if loaded is not None and config.mixed_precision in ("auto", loaded.mixed_precision):
        return loaded
    from likeness.models.runtime import current_plan

    return current_plan(str(pipe.device), "auto", config.mixed_precision)


def _checkpoints(out_dir: Path) -> list[Path]:
    return sorted((out_dir / "checkpoints").glob("step-*"), key=lambda p: int(p.name.split("-")[1]))


def save_loss_curve(out_dir: Path, losses: list[float], lrs: list[float] | None = None) -> None:
    """``loss.csv`` (step, loss, lr) and ``loss.png``."""
    with open(out_dir / "loss.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["step", "loss", "lr"])
        for i, loss in enumerate(losses):
            writer.writerow([i + 1, f"{loss:.6g}", f"{lrs[i]:.6g}" if lrs else ""])
    try:
        import matplotlib
    except ImportError:  # a declared dependency; a machine without it (the GPU check's) still gets loss.csv
        log.warning("matplotlib is not installed: %s/loss.png not drawn (loss.csv has the "
                    "numbers)", out_dir)
        return
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    steps = np.arange(1, len(losses) + 1)
    ax.plot(steps, losses, lw=0.8, alpha=0.5, label="loss")
    if len(losses) >= 10:
        window = max(5, len(losses) // 20)
        smooth = np.convolve(losses, np.ones(window) / window, mode="valid")
        ax.plot(steps[window - 1 :], smooth, lw=1.5, label=f"mean of {window}")
    ax.set_xlabel("step")
    ax.set_ylabel("diffusion loss")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out_dir / "loss.png", dpi=100)
    plt.close(fig)


def train(
    pipe,
    trainable: dict[str, torch.nn.Parameter],
    make_batch: Callable[[int, int, np.random.Generator], Batch],
    config: TrainingConfig,
    out_dir: str | Path,
    *,
    modules: list[torch.nn.Module],
    after_step: Callable[[], None] | None = None,
    prior_loss_weight: float = 1.0,
    fingerprint_extra: dict | None = None,
    extra_loss: Callable[[], torch.Tensor] | None = None,
    identity: IdentityTerm | None = None,
    loss_fn: Callable | None = None,
    plan=None,
) -> TrainingResult:
    """Optimise ``trainable`` (name -> parameter, all inside ``modules``) on batches from ``make_batch``.

    ``make_batch(step, micro, rng)`` must depend only on its arguments. Resumes from the latest
    checkpoint under ``out_dir/checkpoints`` when one exists with the same configuration.
    ``loss_fn`` replaces :func:`diffusion_loss` (same signature) for methods with their own objective.
    ``extra_loss()``, called right after each diffusion loss, adds a method's own term (a regulariser).
    ``plan`` (a :class:`~likeness.models.runtime.RuntimePlan`) gives the device and the mixed precision;
    without one, the pipeline's device and ``config.mixed_precision``.
    """
    from diffusers import DDPMScheduler
    from diffusers.optimization import get_scheduler
    from safetensors.torch import load_file, save_file
    from tqdm.auto import tqdm

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    plan = training_plan(pipe, config, plan)
    plan.apply()
    precision, device = plan.mixed_precision, plan.torch_device
    ranks = _Ranks()
    torch.manual_seed(config.seed)

    names = list(trainable)
    params = [trainable[n] for n in names]
    weight_dtype = plan.training_dtype
    # Frozen parts in the training dtype, the VAE in float32, everything on the plan's device; then the
    # trained tensors back to float32 (they may sit inside a module just cast to half).
    for module in _pipeline_modules(pipe)[1:]:  # the denoiser (UNet or transformer) and the text encoders
        cast_frozen(module, device, weight_dtype)
    pipe.vae.to(device, dtype=torch.float32)
    for module in modules:  # a method's own modules (Celeb Basis' encoder, PhotoVerse's adapters) follow
        module.to(device)
    for p in params:
        p.data = p.data.to(device, torch.float32)
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
    if config.gradient_checkpointing:
        for module in modules:
            if hasattr(module, "enable_gradient_checkpointing"):
                module.enable_gradient_checkpointing()
            elif hasattr(module, "gradient_checkpointing_enable"):
                module.gradient_checkpointing_enable()
    for module in modules:
        module.train()

    lr = config.learning_rate
    if config.scale_lr:
        lr *= config.batch_size * config.gradient_accumulation_steps * ranks.num_processes
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=config.adam_weight_decay)
    lr_scheduler = get_scheduler(config.lr_scheduler, optimizer=optimizer, num_warmup_steps=config.lr_warmup_steps,
                                 num_training_steps=config.max_steps)
    # Modules are not wrapped (pipelines need their plain attributes); under several processes the
    # gradients are averaged explicitly below, which is what DDP would do.
    noise_scheduler = DDPMScheduler.from_config(pipe.scheduler.config)

    fingerprint = config.fingerprint(fingerprint_extra)
    losses: list[float] = []
    lrs: list[float] = []
    start = 0
    existing = _checkpoints(out_dir)
    if existing:
        ckpt = existing[-1]
        state = json.loads((ckpt / "state.json").read_text())
        if state["fingerprint"] != fingerprint:
            raise ResumeMismatchError(
                f"{ckpt}: checkpoint from a run with a different configuration; use another --out folder or "
                f"delete {out_dir / 'checkpoints'} to start over"
            )
        tensors = load_file(ckpt / "trainable.safetensors")
        with torch.no_grad():
            for n, p in zip(names, params):
                p.copy_(tensors[n].to(p.device, p.dtype))
        # weights_only: a checkpoint folder may come from someone else; never unpickle code from it
        extra = torch.load(ckpt / "optimizer.pt", map_location="cpu", weights_only=True)
        optimizer.load_state_dict(extra["optimizer"])
        lr_scheduler.load_state_dict(extra["lr_scheduler"])
        torch.set_rng_state(extra["torch_rng"])
        if "scaler" in extra:
            scaler.load_state_dict(extra["scaler"])
        start, losses, lrs = state["step"], state["losses"], state["lrs"]
        log.warning("resuming %s from step %d", out_dir, start)

    def save_checkpoint(step: int) -> None:
        ckpt = out_dir / "checkpoints" / f"step-{step:06d}"
        tmp = ckpt.with_name(ckpt.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        save_file({n: p.detach().float().cpu().contiguous() for n, p in zip(names, params)}, tmp / "trainable.safetensors")
        torch.save({"optimizer": optimizer.state_dict(), "lr_scheduler": lr_scheduler.state_dict(),
                    "torch_rng": torch.get_rng_state(), "scaler": scaler.state_dict()}, tmp / "optimizer.pt")
        (tmp / "state.json").write_text(json.dumps({"step": step, "losses": losses, "lrs": lrs, "fingerprint": fingerprint}))
        shutil.rmtree(ckpt, ignore_errors=True)
        tmp.rename(ckpt)  # a checkpoint is either complete or absent
        for old in _checkpoints(out_dir)[: -config.checkpoints_to_keep]:
            shutil.rmtree(old, ignore_errors=True)

    step_seconds: list[float] = []
    bar = tqdm(total=config.max_steps, initial=start, desc="training", disable=not config.progress or not ranks.is_main_process)
    accumulation = config.gradient_accumulation_steps
    for step in range(start, config.max_steps):
        tic = time.perf_counter()
        micro_losses = []
        for micro in range(accumulation):
            rank_seed = config.seed * 1000 + ranks.process_index
            batch = make_batch(step, micro, step_rng(rank_seed, step, micro))
            with torch.autocast(device.type, dtype=weight_dtype, enabled=precision != "no"):
                loss = (loss_fn or diffusion_loss)(pipe, noise_scheduler, batch, step_generator(rank_seed, step, micro, 1),
                                                   prior_loss_weight=prior_loss_weight, identity=identity)
                if extra_loss is not None:
                    loss = loss + extra_loss()
            scaler.scale(loss.float() / accumulation).backward()
            micro_losses.append(ranks.mean(loss.detach().float()).item())
        for p in params:
            if p.grad is not None:
                p.grad = ranks.mean(p.grad)
        scaler.unscale_(optimizer)
        if config.max_grad_norm:
            torch.nn.utils.clip_grad_norm_(params, config.max_grad_norm)
        scaler.step(optimizer)  # skipped when fp16 gradients overflowed (the scale then shrinks)
        scaler.update()
        lr_scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        if after_step is not None:
            after_step()
        losses.append(float(np.mean(micro_losses)))
        step_seconds.append(time.perf_counter() - tic)
        lrs.append(float(lr_scheduler.get_last_lr()[0]))
        bar.update(1)
        bar.set_postfix(loss=f"{losses[-1]:.4f}")
        done = step + 1
        if ranks.is_main_process and config.checkpoint_every and done % config.checkpoint_every == 0 and done < config.max_steps:
            save_checkpoint(done)
    bar.close()
    ranks.wait_for_everyone()
    for module in modules:
        module.eval()
    if ranks.is_main_process:
        save_loss_curve(out_dir, losses, lrs)
    notes = []
    if identity is not None:
        mean = float(np.mean(identity.values)) if identity.values else float("nan")
        notes.append(f"identity loss ({getattr(identity.loss, 'name', '')}, weight {identity.weight:g}): "
                     f"{identity.used} samples, mean {mean:.4f}; {identity.skipped} left out (face too small or class image)")
    return TrainingResult(losses=losses, steps=config.max_steps, resumed_from=start, out_dir=out_dir, step_seconds=step_seconds,
                          notes=notes)


def remove_checkpoints(out_dir: str | Path) -> None:
    """Called once the final artifact is written: checkpoints are only for interrupted runs."""
    shutil.rmtree(Path(out_dir) / "checkpoints", ignore_errors=True)
