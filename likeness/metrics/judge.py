"""The open multimodal judge (protocol ``judge-*/rubric-v1+<model>``): a local vision-language model (Qwen2.5-VL /
Qwen3-VL class, ``--judge-model``, default ``Qwen/Qwen2.5-VL-7B-Instruct``) answers likeness' rubric on
DreamBench++'s 0-4 scale, greedily, and its short reason is kept with every score (detail ``reason``).

- ``judge-identity``: reference photo + generated image -> is it the same person (DreamBench++'s concept
  preservation, for a person);
- ``judge-prompt``: generated image + prompt -> does it follow the prompt (DreamBench++'s prompt following);
- ``judge-overall``: identity x prompt, both on [0, 1] (DreamBench++'s CP·PF).

Values are score / 4, in [0, 1]; the integer score is in the detail. An answer that cannot be read is a row with
status ``parse_failed``, ``out_of_range`` or ``refused`` and no value (never a guessed score). The judge is the
most expensive metric: it runs only when named (never in ``likeness bench``'s default metrics) and its answers
are cached (``likeness.models.judge``). Rubric and parser: ``likeness.metrics.rubric``; docs/judge.md.
"""

from __future__ import annotations

from likeness.metrics import METRICS
from likeness.metrics.base import Sample, Score, VisionLanguageMetric
from likeness.metrics.features import judge_answer
from likeness.metrics.rubric import RUBRIC_VERSION, SCALE, parse_answer
from likeness.models import judge as judge_model  # noqa: F401  (registers the judge's loader)

ANSWER_CHARS = 600


class JudgeMetric(VisionLanguageMetric):
    version = RUBRIC_VERSION
    roles = ("judge",)
    only_when_asked = True  # never a default metric: it is the most expensive one
    aspects: tuple[str, ...] = ()

    @property
    def protocol(self) -> dict:
        """Model id (in the name), revision, rubric version, decoding, pixel bound and dtype, computed once."""
        if getattr(self, "_protocol", None) is None:
            from likeness.models.loading import pick_device, pick_dtype

            protocol = super().protocol
            model_id = self.models.model_id("judge")
            dtype = pick_dtype(pick_device(self.models.device), self.models.dtype)
            protocol["judge"] = {"model": model_id, "revision": judge_model.judge_revision(model_id), "rubric": RUBRIC_VERSION,
                                 "scale": list(SCALE), "decoding": dict(judge_model.DECODING),
                                 "max_pixels": judge_model.MAX_PIXELS, "dtype": str(dtype).replace("torch.", "")}
            self._protocol = protocol
        return self._protocol

    def parsed(self, features: dict, aspect: str):
        feature = features[judge_answer(aspect)]
        return feature, parse_answer(feature.answer)

    def _detail(self, feature, parsed) -> dict:
        detail = {"score": parsed.score, "reason": parsed.reason, "cached": feature.cached}
        if parsed.status != "ok":
            detail.update(problem=parsed.problem, answer=feature.answer[:ANSWER_CHARS])
        return detail

    def score_features(self, sample: Sample, features: dict) -> Score:
        problem = self.problem(sample, features, self.features)
        if problem is not None:
            return problem
        feature, parsed = self.parsed(features, self.aspects[0])
        value = None if parsed.score is None else parsed.score / SCALE[1]
        return self._row(sample, value, parsed.status, **self._detail(feature, parsed))


@METRICS.register("judge-identity")
class JudgeIdentity(JudgeMetric):
    name = "judge-identity"
    aspects = ("identity",)
    features = tuple(judge_answer(a) for a in aspects)
    definition = ("an open vision-language judge (greedy) shown the reference photo and the generated image rates identity "
                  "preservation on DreamBench++'s 0-4 scale with likeness' rubric-v1; value = score / 4.")


@METRICS.register("judge-prompt")
class JudgePrompt(JudgeMetric):
    name = "judge-prompt"
    aspects = ("prompt",)
    features = tuple(judge_answer(a) for a in aspects)
    definition = ("an open vision-language judge (greedy) shown the generated image and its prompt ({} -> 'a person') rates "
                  "prompt following on DreamBench++'s 0-4 scale with likeness' rubric-v1; value = score / 4.")


@METRICS.register("judge-overall")
class JudgeOverall(JudgeMetric):
    name = "judge-overall"
    aspects = ("identity", "prompt")
    features = tuple(judge_answer(a) for a in aspects)
    definition = ("judge-identity x judge-prompt (both score / 4), DreamBench++'s CP·PF; unscored when either answer is "
                  "(its status).")

    def score_features(self, sample: Sample, features: dict) -> Score:
        problem = self.problem(sample, features, self.features)
        if problem is not None:
            return problem
        (identity_f, identity), (prompt_f, prompt) = (self.parsed(features, a) for a in self.aspects)
        detail = {"identity": self._detail(identity_f, identity), "prompt": self._detail(prompt_f, prompt)}
        for parsed in (identity, prompt):
            if parsed.status != "ok":
                return self._row(sample, None, parsed.status, **detail)
        return self._row(sample, identity.score / SCALE[1] * prompt.score / SCALE[1], "ok", **detail)
