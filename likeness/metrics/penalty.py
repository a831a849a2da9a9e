"""Stellar's metric-exploitation penalty: identity scores count only for images that follow their prompt.

An image follows its prompt when CLIP-T > CLIP-N + 2 std(CLIP-N), where CLIP-N is the prompt's similarity to
the *reference photo* and the std is over every image of the set: the sample std (ddof 1, pandas' default, as
the official code computes it; protocol ``v2``; ``v1`` used the population std). Images that do not follow it
get IPS and SIS 0: a copy of the input photo must not win. The raw rows stay; the penalised ones are derived
rows (``ips-penalised``, ``sis-penalised``) recomputed from the stored CLIP-T/CLIP-N rows at every summary,
because the threshold depends on the whole set. An image without CLIP-T or CLIP-N cannot be judged (nor can
any image of a set with fewer than two CLIP-N values, where the sample std is undefined): it keeps its raw value
with status ``unjudged`` (counted).

The official code also flips the APS predictions of the images that fail (``aps-penalised``, derived from the
``aps/probe`` rows the same way): every attribute prediction of a failing image is negated, a no-face image's
(wrong) predictions included, and the set-level balanced accuracy is recomputed. The official line that does it
is a chained assignment that pandas 3 (copy-on-write) silently ignores, so the official APS is ``aps`` under
pandas 3 and ``aps-penalised`` under pandas < 3; likeness reports both, under their own protocol names.
"""

from __future__ import annotations

import numpy as np

from likeness.metrics.base import Metric, Score

PENALISED = {"ips": "ips-penalised", "sis": "sis-penalised"}
APS_PENALISED = "aps-penalised"
VERSION = "v2"
DDOF = 1  # sample std, as pandas computes Series.std() in the official code


def follows_prompt(clip_t: dict[str, float], clip_n: dict[str, float]) -> tuple[dict[str, bool], float]:
    """Per item (with both scores): does CLIP-T beat CLIP-N + 2 std(CLIP-N)? And that std (sample std, over every
    finite CLIP-N of the set; NaN, so nothing judged, with fewer than two)."""
    n_values = np.array([v for v in clip_n.values() if v is not None and np.isfinite(v)], dtype=np.float64)
    std = float(n_values.std(ddof=DDOF)) if n_values.size > DDOF else float("nan")
    follows = {}
    for item, t in clip_t.items():
        n = clip_n.get(item)
        if t is None or n is None or not np.isfinite(t) or not np.isfinite(n) or not np.isfinite(std):
            continue
        follows[item] = bool(t > n + 2 * std)
    return follows, std


def penalised_rows(raw: list[Score], follows: dict[str, bool], std: float, clip_protocol: str) -> list[Score]:
    """The penalised copy of each raw identity row (value 0 and status ``zeroed`` when the image fails)."""
    rows = []
    for s in raw:
        name = PENALISED[s.metric]
        protocol = {"name": f"{name}/{VERSION}+{s.protocol.get('name', '')}+{clip_protocol}", "metric": name,
                    "definition": f"{s.metric.upper()} set to 0 unless CLIP-T > CLIP-N + 2 std(CLIP-N) (sample std over the set)."}
        detail = {"raw_value": s.value, "raw_status": s.status, "clip_n_std": std}
        if s.value is None:
            rows.append(Score(s.item_id, name, None, s.status, s.n_faces, protocol, detail))
        elif s.item_id not in follows:
            rows.append(Score(s.item_id, name, s.value, "unjudged", s.n_faces, protocol, detail))
        elif follows[s.item_id]:
            rows.append(Score(s.item_id, name, s.value, s.status, s.n_faces, protocol, {**detail, "follows_prompt": True}))
        else:
            rows.append(Score(s.item_id, name, 0.0, "zeroed", s.n_faces, protocol, {**detail, "follows_prompt": False}))
    return rows


def flipped_aps_rows(raw: list[Score], follows: dict[str, bool], std: float, clip_protocol: str) -> list[Score]:
    """The ``aps-penalised`` copy of each ``aps/probe`` row: the predictions of an image that fails the penalty
    negated (the official code's intent; status ``flipped``), unjudged images kept as they are."""
    rows = []
    for s in raw:
        protocol = {"name": f"{APS_PENALISED}/{VERSION}+{s.protocol.get('name', '')}+{clip_protocol}",
                    "metric": APS_PENALISED,
                    "definition": "APS with every attribute prediction of an image negated unless CLIP-T > CLIP-N + "
                                  "2 std(CLIP-N) (sample std over the set), as the official code intends."}
        detail = {**s.detail, "raw_status": s.status, "clip_n_std": std}
        status = s.status
        if s.detail.get("pred") and s.item_id not in follows:
            status = "unjudged"
        elif s.detail.get("pred") and not follows[s.item_id]:
            detail["pred"] = {a: -v for a, v in s.detail["pred"].items()}
            status = "flipped"
        if "pred" in s.detail:
            detail["follows_prompt"] = follows.get(s.item_id)
        value = s.value
        if status == "flipped" and s.detail.get("true"):
            value = float(np.mean([detail["pred"][a] == s.detail["true"][a] for a in detail["pred"]]))
        rows.append(Score(s.item_id, APS_PENALISED, value, status, s.n_faces, protocol, detail))
    return rows


class PenalisedSummary(Metric):
    """Summaries of derived penalised rows (not a registered metric: nothing to compute per image)."""

    version = VERSION
    definition = "identity score set to 0 unless CLIP-T > CLIP-N + 2 std(CLIP-N)."

    def __init__(self, name: str):
        super().__init__()
        self.name = name

    def summarize(self, scores: list[Score]) -> dict:
        summary = super().summarize(scores)
        summary["zeroed"] = sum(s.status == "zeroed" for s in scores)
        summary["unjudged"] = sum(s.status == "unjudged" for s in scores)
        raw = [s.detail.get("raw_value") for s in scores if s.detail.get("raw_value") is not None]
        summary["raw_value"] = float(np.mean(raw)) if raw else float("nan")
        summary["clip_n_std"] = next((s.detail.get("clip_n_std") for s in scores), float("nan"))
        if scores:
            summary["protocol"] = scores[0].protocol.get("name", "")
        return summary
