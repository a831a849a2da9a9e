"""ImageReward and HPSv2 through their own packages, as optional extras: used when installed, otherwise every
row is status ``package_missing`` with the pip command (they need torchvision, which likeness does not pull
in, and download their weights themselves). ``likeness bench`` leaves them out unless the package imports.
"""

from __future__ import annotations

import importlib.util

from likeness.data.images import ImageError, load_image
from likeness.metrics import METRICS
from likeness.metrics.base import Sample, Score, VisionLanguageMetric
from likeness.metrics.features import prompt_text


class PackageMetric(VisionLanguageMetric):
    module = ""
    pip = ""

    @classmethod
    def unavailable(cls, models) -> list[str]:
        return [] if importlib.util.find_spec(cls.module) is not None else [f"package {cls.module} (pip install {cls.pip})"]

    @property
    def protocol(self) -> dict:
        return {"name": f"{self.name}/{self.version}+{self.module}", "metric": self.name, "definition": self.definition}

    def score_features(self, sample: Sample, features: dict) -> Score:
        if importlib.util.find_spec(self.module) is None:
            return self._row(sample, None, "package_missing", problem=f"{self.name} needs the {self.module} package: pip install {self.pip}")
        text = prompt_text(sample.meta)
        if not text:
            return self._row(sample, None, "no_prompt" if text is None else "empty_prompt", problem="no prompt to score against")
        try:
            image = load_image(sample.image)
        except ImageError as exc:
            return self._row(sample, None, exc.status, problem=str(exc))
        return self._row(sample, self._score(text, image), "ok", text=text)

    def _score(self, text: str, image) -> float:
        raise NotImplementedError


@METRICS.register("imagereward")
class ImageRewardScore(PackageMetric):
    name = "imagereward"
    module, pip = "ImageReward", "image-reward"
    definition = "ImageReward-v1.0 reward of (prompt, image) from the ImageReward package."

    def _score(self, text, image):
        if not hasattr(self, "_model"):
            import ImageReward

            self._model = ImageReward.load("ImageReward-v1.0")
        return float(self._model.score(text, [image]))


@METRICS.register("hpsv2")
class HPSv2Score(PackageMetric):
    name = "hpsv2"
    module, pip = "hpsv2", "hpsv2"
    definition = "HPS v2.1 score of (prompt, image) from the hpsv2 package."

    def _score(self, text, image):
        import hpsv2

        return float(hpsv2.score([image], text, hps_version="v2.1")[0])
