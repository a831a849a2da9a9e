"""What differs between base-model families: which pipeline classes belong to which family, the denoiser's
name, and the flow-matching bases' specifics (FLUX.1, FLUX.2 [klein], SD3.5, Qwen-Image).

UNet families (``sd1``, ``sd2``, ``sdxl``) are told apart by their UNet config (see
:func:`likeness.models.loading.detect_family`); the flow-matching transformers by the pipeline class their folder's
``model_index.json`` names. A LoRA or an artifact made on one family never fits another: FLUX.1's transformer has
double- and single-stream blocks of 3072 channels, FLUX.2's a different block layout, SD3.5's an MMDiT of 2432 or
1536, Qwen-Image's 3072 with another naming; likeness refuses the mismatch by family name before loading weights.
"""

from __future__ import annotations

UNET_FAMILIES = ("sd1", "sd2", "sdxl")
FLOW_FAMILIES = ("flux1", "flux2", "sd3", "qwen-image")

# model_index.json "_class_name" -> family, for the flow-matching transformers.
FLOW_PIPELINES = {
    "FluxPipeline": "flux1",
    "FluxKontextPipeline": "flux1",
    "FluxImg2ImgPipeline": "flux1",
    "Flux2Pipeline": "flux2",
    "Flux2KleinPipeline": "flux2",
    "StableDiffusion3Pipeline": "sd3",
    "QwenImagePipeline": "qwen-image",
    "QwenImageEditPipeline": "qwen-image",
    "QwenImageEditPlusPipeline": "qwen-image",
}

FAMILY_NAMES = {
    "sd1": "Stable Diffusion 1.x", "sd2": "Stable Diffusion 2.x", "sdxl": "SDXL", "flux1": "FLUX.1",
    "flux2": "FLUX.2", "sd3": "Stable Diffusion 3/3.5", "qwen-image": "Qwen-Image",
}

# Hub ids whose licence must be accepted on the hub before download (the error says so by name).
GATED_HINTS = {
    "black-forest-labs/FLUX.1-dev": "FLUX.1 [dev] Non-Commercial License",
    "black-forest-labs/FLUX.1-Kontext-dev": "FLUX.1 [dev] Non-Commercial License",
    "stabilityai/stable-diffusion-3.5-large": "Stability AI Community License",
    "stabilityai/stable-diffusion-3.5-medium": "Stability AI Community License",
}


class UnknownFamilyError(ValueError):
    """A model folder whose pipeline likeness does not know how to personalize or sample."""


def is_flow(family: str) -> bool:
    return family in FLOW_FAMILIES


def family_of_class(class_name: str) -> str | None:
    return FLOW_PIPELINES.get(class_name)


def denoiser(pipe):
    """The network that denoises: ``unet`` (SD 1.x/2.x/XL) or ``transformer`` (flow-matching families)."""
    unet = getattr(pipe, "unet", None) if "unet" in pipe.components else None
    return unet if unet is not None else pipe.transformer


def denoiser_name(pipe) -> str:
    return "unet" if "unet" in pipe.components and pipe.components["unet"] is not None else "transformer"


def text_encoders(pipe) -> list:
    """Every text encoder of the pipeline, in the pipeline's order (``text_encoder``, ``_2``, ``_3``)."""
    names = ("text_encoder", "text_encoder_2", "text_encoder_3")
    return [pipe.components[n] for n in names if pipe.components.get(n) is not None]


def native_resolution(pipe) -> int:
    """The pipeline's default image side in pixels (what it generates when no size is given)."""
    if "unet" in pipe.components and pipe.components["unet"] is not None:
        return int(pipe.unet.config.sample_size * pipe.vae_scale_factor)
    return int(pipe.default_sample_size * pipe.vae_scale_factor)


def torchvision_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("torchvision") is not None


def enable_processor_loading() -> None:
    """Let transformers 5.23 build a ``Qwen2VLProcessor`` (the processor Qwen-Image-Edit uses) without torchvision.

    Any processor with a video slot checks that slot against ``VideoProcessorMixin``, which transformers exports
    only with torchvision, and refuses ``None``; without torchvision no video processor can exist, so the check can
    never pass. Where torchvision is missing, the class it looks for is exposed as "a video processor or none"; with
    torchvision nothing changes."""
    if torchvision_available():
        return
    try:
        import transformers.processing_utils as processing_utils
        from transformers.video_processing_utils import VideoProcessorMixin
    except ImportError:  # another transformers layout: nothing to do
        return
    module = processing_utils.transformers_module
    if not hasattr(module, "VideoProcessorMixin"):
        setattr(module, "VideoProcessorMixin", (VideoProcessorMixin, type(None)))


def qwen_vl_processor(folder):
    """The ``Qwen2VLProcessor`` saved in ``folder`` for image-only use (no video processor), or None where
    torchvision is installed and transformers loads it itself. Its own ``from_pretrained`` would also load the video
    processor, which needs torchvision; Qwen-Image-Edit only ever gives it images."""
    if torchvision_available():
        return None
    enable_processor_loading()
    from transformers import Qwen2Tokenizer, Qwen2VLImageProcessor, Qwen2VLProcessor

    return Qwen2VLProcessor(image_processor=Qwen2VLImageProcessor.from_pretrained(folder),
                            tokenizer=Qwen2Tokenizer.from_pretrained(folder), video_processor=None)


def sampling_kwargs(family: str, kwargs: dict) -> dict:
    """Pipeline-call arguments for likeness's shared sampling options (steps, guidance, size, seeds, negative prompt).

    ``guidance_scale`` means what the family's users mean by guidance: classifier-free guidance on SD 1.x/2.x/XL, SD3.5
    and FLUX.2 (the pipelines' ``guidance_scale``); the distilled-guidance input on FLUX.1 [dev] (its pipeline's
    ``guidance_scale`` too; true CFG there needs ``true_cfg_scale``, left at its default 1); on Qwen-Image, whose
    transformer has no guidance input, true classifier-free guidance: ``true_cfg_scale``, with Qwen-Image's own
    empty negative prompt (" ") when none is given, because its pipeline skips CFG without a negative prompt."""
    kwargs = dict(kwargs)
    if family == "flux2":  # FLUX.2 pipelines take no negative prompt (their CFG uses the empty prompt)
        if kwargs.pop("negative_prompt", None):
            raise ValueError("FLUX.2 pipelines take no negative prompt; leave --negative-prompt out")
    if family == "qwen-image":
        guidance = kwargs.pop("guidance_scale", None)
        if guidance is not None:
            kwargs["true_cfg_scale"] = guidance
            if guidance > 1 and not kwargs.get("negative_prompt"):
                batch = len(kwargs["generator"]) if isinstance(kwargs.get("generator"), list) else 1
                kwargs["negative_prompt"] = [" "] * batch
    return kwargs
