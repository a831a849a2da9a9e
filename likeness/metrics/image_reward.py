"""ImageReward v1.0 (Xu et al. 2023): BLIP's image-grounded text encoder + an MLP trained on human rankings;
score = (MLP(text encoder output at [CLS]) - mean) / std with the authors' constants, so about N(0, 1) over their
data. Loaded from the published ``ImageReward.pt`` by likeness' own converter (``likeness.models.reward_models``;
``--imagereward-model``, default ``THUDM/ImageReward:ImageReward.pt``, tokenizer ``--imagereward-tokenizer``).
Prompts longer than its 35 tokens are cut, and the row says so (status ``truncated``)."""

from __future__ import annotations

from likeness.metrics import METRICS
from likeness.metrics.base import Sample, Score, VisionLanguageMetric
from likeness.metrics.clip_t import text_row
from likeness.metrics.features import reward
from likeness.models.reward_models import IMAGEREWARD_MEAN, IMAGEREWARD_STD


@METRICS.register("imagereward")
class ImageReward(VisionLanguageMetric):
    name = "imagereward"
    roles = ("imagereward", "imagereward-tokenizer")
    features = (reward("imagereward"),)
    definition = (f"ImageReward v1.0: (head(BLIP text encoder at [CLS], cross-attending to the image; prompt with {{}} -> "
                  f"'a person', 35 tokens) - {IMAGEREWARD_MEAN}) / {IMAGEREWARD_STD}; fp32.")

    def score_features(self, sample: Sample, features: dict) -> Score:
        problem = self.problem(sample, features, self.features)
        if problem is not None:
            return problem
        feature = features[self.features[0]]
        value = (feature.raw - IMAGEREWARD_MEAN) / IMAGEREWARD_STD
        return text_row(self, sample, value, feature, raw=feature.raw)
