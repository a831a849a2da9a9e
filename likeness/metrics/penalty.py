"""Stellar's metric-exploitation penalty: identity scores count only for images that follow their prompt.

An image follows its prompt when CLIP-T > CLIP-N + 2 std(CLIP-N), where CLIP-N is the prompt's similarity to
the *reference photo* and the std is over every image of the set (population std). Images that do not
follow it get IPS and SIS 0: a copy of the input photo must not win. The raw rows stay; the penalised ones
are derived rows (``ips-penalised``, ``sis-penalised``) recomputed from the stored CLIP-T/CLIP-N rows at
every summary, because the threshold depends on the whole set. An image without CLIP-T or CLIP-N cannot be
judged: it keeps its raw value with status ``unjudged`` (counted).
"""

from __future__ import annotations

import numpy as np

from likeness.metrics.base import Metric, Score

PENALISED = {"ips": "ips-penalised", "sis": "sis-penalised"}
VERSION = "v1"


def follows_prompt(clip_t: dict[str, float], clip_n: dict[str, float]) -> tuple[dict[str, bool], float]:
    """Per item (with both scores): does CLIP-T beat CLIP-N + 2 std(CLIP-N)? And that std."""
    n_values = np.array([v for v in clip_n.values() if v is not None and np.isfinite(v)], dtype=np.float64)
    std = float(n_values.std()) if n_values.size else float("nan")
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
                    "definition": f"{s.metric.upper()} set to 0 unless CLIP-T > CLIP-N + 2 std(CLIP-N) (std over the set)."}
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
