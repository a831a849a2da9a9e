"""The device and precision options every command that runs a model shares, and the plan they resolve to.

``add_runtime_options(parser, training=..., generation=...)`` adds ``--device`` and ``--dtype`` (and, where a
command trains, ``--mixed-precision``; where it generates, ``--offload`` and VAE slicing / tiling; ``--tf32``);
``runtime_choices(args)`` gives them as keyword arguments of :func:`likeness.models.runtime.resolve_plan`, and
``plan_from_args(args)`` resolves them on this machine (a :class:`~likeness.models.runtime.PlanError` when the
machine cannot honour them, which :func:`likeness.cli.main` turns into exit code 2).
"""

from __future__ import annotations

from likeness.models.runtime import DTYPES, MIXED_PRECISIONS, OFFLOADS

GROUP_TITLE = "device and precision"


def add_runtime_options(parser, *, training: bool = False, generation: bool = False) -> None:
    group = parser.add_argument_group(GROUP_TITLE)
    group.add_argument("--device",
                       help="cpu, cuda, cuda:<index> or mps (default: this rank's GPU under a launcher, else the first "
                            "GPU, then Apple MPS, then the CPU); a device the machine lacks is an error")
    group.add_argument("--dtype", choices=DTYPES, default="auto",
                       help="weights' precision (default auto: float32 on the CPU; on CUDA bfloat16 where the card has "
                            "it natively, compute capability >= 8.0, else float16); a precision the card lacks is an error")
    if training:
        group.add_argument("--mixed-precision", choices=MIXED_PRECISIONS, default="auto", dest="mixed_precision",
                           help="training precision of the frozen parts (autocast); trained tensors and the VAE stay "
                                "float32 (default auto: follows --dtype, so no on the CPU)")
    if generation:
        group.add_argument("--offload", choices=OFFLOADS, default="none",
                           help="diffusers' CPU offload for large bases on a small GPU: model (whole models move in "
                                "turn) or sequential (layer by layer: least memory, slowest) (default: none)")
        group.add_argument("--vae-slicing", action="store_true", help="decode a batch one image at a time (less memory)")
        group.add_argument("--vae-tiling", action="store_true",
                           help="decode large images in overlapping tiles (less memory; pixels change slightly)")
    group.add_argument("--tf32", action="store_true",
                       help="allow TF32 matmuls on CUDA (faster on Ampere and later, but float32 results then differ "
                            "between GPU generations; off by default for reproducible numbers)")


def runtime_choices(args) -> dict:
    """The runtime options of ``args`` as keyword arguments of ``resolve_plan`` / ``current_plan``."""
    choices = {"device": getattr(args, "device", None), "dtype": getattr(args, "dtype", "auto"),
               "mixed_precision": getattr(args, "mixed_precision", None) or "auto",
               "offload": getattr(args, "offload", "none"), "tf32": bool(getattr(args, "tf32", False)),
               "vae_slicing": bool(getattr(args, "vae_slicing", False)),
               "vae_tiling": bool(getattr(args, "vae_tiling", False))}
    return choices


def runtime_argv(args) -> list[str]:
    """The runtime options of ``args`` other than their defaults, as command-line words (for a child command)."""
    words = []
    for key, value in runtime_choices(args).items():
        flag = "--" + key.replace("_", "-")
        if value is True:
            words.append(flag)
        elif value not in (None, "auto", "none", False):
            words += [flag, str(value)]
    return words


def plan_from_args(args):
    """The process's runtime plan for the parsed options (resolved on this machine, applied)."""
    from likeness.models.runtime import current_plan

    plan = current_plan(**runtime_choices(args))
    plan.apply()
    return plan
