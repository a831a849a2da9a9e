"""HPSv2 (Wu et al. 2023, Human Preference Score v2 / v2.1): a CLIP ViT-H-14 fine-tuned on human choices;
score = cosine(image, prompt) of its normalised embeddings, no logit scale (about 0.2-0.35 for real images), as
the authors' ``hpsv2.score`` computes it. Loaded from the published checkpoint by likeness' own converter
(``likeness.models.reward_models``; ``--hps-model``, default ``xswu/HPSv2:HPS_v2.1_compressed.pt``, tokenizer
``--hps-tokenizer``). The protocol name carries the checkpoint, so v2 and v2.1 scores never mix."""

from __future__ import annotations

from likeness.metrics import METRICS
from likeness.metrics.clip_t import ClipT
from likeness.metrics.features import clip_image, clip_prompt
from likeness.models import reward_models  # noqa: F401  (registers the HPSv2 loader)


@METRICS.register("hpsv2")
class HPSv2(ClipT):
    """CLIP-T's score (image . prompt cosine) on HPSv2's towers."""

    name = "hpsv2"
    roles = ("hps", "hps-tokenizer")
    features = (clip_image("hps"), clip_prompt("hps"))
    definition = ("HPSv2: cosine(HPS image embedding, HPS text embedding of the prompt with {} -> 'a person', 77 tokens); "
                  "images resized to 224 on the longer side and padded black to a square; fp32.")
