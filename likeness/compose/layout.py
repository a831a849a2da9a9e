"""Layout: where each concept goes on the canvas.

Two planners return the same :class:`Layout` (boxes in canvas pixels + a background description):

- :class:`OfflinePlanner`: deterministic from a seed. Target areas follow the concepts' relative-size
  priors, clipped to the paper's 3-25% of the image per object; each box keeps its concept's aspect
  ratio exactly (up to one pixel); boxes never overlap (largest placed first, rejection sampling,
  everything shrunk a little and retried when a canvas is crowded).
- :class:`LLMPlanner` (in :mod:`likeness.compose.llm`): any OpenAI-compatible chat endpoint proposes
  the boxes and the background, in the few-shot style of LLM-grounded diffusion as Gen4Gen does;
  its answer is validated with :func:`validate_layout` like everything else.

:func:`validate_layout` is the single rulebook both obey (and what the tests check).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

MIN_AREA = 0.03
MAX_AREA = 0.25
BACKGROUNDS = (
    "a sunny garden with green grass", "a cozy living room with a wooden floor", "a sandy beach at sunset",
    "a city street with brick buildings", "a snowy park in winter", "a kitchen counter by a window",
    "a forest path in autumn", "a studio with a plain grey backdrop",
)


class LayoutError(ValueError):
    """No valid layout: the reason names the concept and the rule (``status`` short and machine-readable)."""

    def __init__(self, message: str, status: str = "invalid_layout"):
        self.status = status
        super().__init__(message)


@dataclass(frozen=True)
class Box:
    x0: int
    y0: int
    x1: int
    y1: int

    @property
    def width(self) -> int:
        return self.x1 - self.x0

    @property
    def height(self) -> int:
        return self.y1 - self.y0

    @property
    def area(self) -> int:
        return self.width * self.height

    def overlaps(self, other: "Box") -> bool:
        return self.x0 < other.x1 and other.x0 < self.x1 and self.y0 < other.y1 and other.y0 < self.y1

    def as_list(self) -> list[int]:
        return [self.x0, self.y0, self.x1, self.y1]


@dataclass
class Layout:
    canvas: tuple[int, int]  # (width, height)
    boxes: dict[str, Box]  # concept name -> box, in placement order
    background: str
    planner: str = "offline"
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"canvas": list(self.canvas), "boxes": {k: v.as_list() for k, v in self.boxes.items()},
                "background": self.background, "planner": self.planner, "notes": list(self.notes)}


def aspect_tolerance(box: Box) -> float:
    """How far w/h may drift from the concept's aspect by rounding both sides to whole pixels."""
    return 1.0 / box.height + box.width / box.height ** 2 + 1e-9


def validate_layout(layout: Layout, aspects: dict[str, float], *, min_area: float = MIN_AREA,
                    max_area: float = MAX_AREA, aspect_slack: float = 0.0) -> None:
    """Raise :class:`LayoutError` unless every box is inside the canvas, within [min_area, max_area]
    of it, keeps its concept's aspect (rounding, plus ``aspect_slack`` relative), and no two overlap."""
    width, height = layout.canvas
    missing = sorted(set(aspects) - set(layout.boxes))
    extra = sorted(set(layout.boxes) - set(aspects))
    if missing or extra:
        raise LayoutError(f"layout names {sorted(layout.boxes)}; expected {sorted(aspects)}", "wrong_concepts")
    names = list(layout.boxes)
    for name in names:
        box = layout.boxes[name]
        if box.width <= 0 or box.height <= 0:
            raise LayoutError(f"{name}: empty box {box.as_list()}", "empty_box")
        if box.x0 < 0 or box.y0 < 0 or box.x1 > width or box.y1 > height:
            raise LayoutError(f"{name}: box {box.as_list()} leaves the {width}x{height} canvas", "outside_canvas")
        fraction = box.area / (width * height)
        if fraction < min_area:
            raise LayoutError(f"{name}: box covers {fraction:.1%} of the image, below {min_area:.0%}", "too_small")
        if fraction > max_area:
            raise LayoutError(f"{name}: box covers {fraction:.1%} of the image, above {max_area:.0%}", "too_large")
        aspect = aspects[name]
        drift = abs(box.width / box.height - aspect)
        if drift > aspect_tolerance(box) + aspect_slack * aspect:
            raise LayoutError(f"{name}: box aspect {box.width / box.height:.3f} does not keep the concept's "
                              f"{aspect:.3f}", "aspect")
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            if layout.boxes[a].overlaps(layout.boxes[b]):
                raise LayoutError(f"boxes of {a} {layout.boxes[a].as_list()} and {b} {layout.boxes[b].as_list()} "
                                  "overlap", "overlap")


def box_size(aspect: float, area_px: float, canvas: tuple[int, int], lo_px: float, hi_px: float) -> tuple[int, int]:
    """Whole-pixel (w, h) with w/h as close to ``aspect`` as rounding allows and area in [lo_px, hi_px].

    Raises :class:`LayoutError` when no such box fits the canvas (an extremely long or tall concept).
    """
    width, height = canvas
    best = None
    h0 = math.sqrt(area_px / aspect)
    for h in sorted({max(1, int(math.floor(h0)) + d) for d in range(-3, 4)}, key=lambda h: abs(h - h0)):
        w = max(1, int(round(aspect * h)))
        if w > width or h > height or not lo_px <= w * h <= hi_px:
            continue
        if abs(w / h - aspect) > aspect_tolerance(Box(0, 0, w, h)):
            continue
        best = (w, h)
        break
    if best is None:
        raise LayoutError(f"a concept of aspect {aspect:.2f} cannot fill {lo_px / (width * height):.0%}-"
                          f"{hi_px / (width * height):.0%} of a {width}x{height} canvas inside it", "cannot_fit")
    return best


class OfflinePlanner:
    """Deterministic, seeded, no network. ``fill``: share of the canvas all boxes together aim at."""

    name = "offline"

    def __init__(self, *, min_area: float = MIN_AREA, max_area: float = MAX_AREA, fill: float = 0.45,
                 jitter: float = 0.15, backgrounds=BACKGROUNDS, tries: int = 300, restarts: int = 12):
        if not 0 < min_area <= max_area < 1:
            raise ValueError(f"need 0 < min_area <= max_area < 1, got {min_area}, {max_area}")
        self.min_area, self.max_area, self.fill, self.jitter = min_area, max_area, fill, jitter
        self.backgrounds, self.tries, self.restarts = tuple(backgrounds), tries, restarts

    def target_fractions(self, priors: dict[str, float], rng: np.random.Generator) -> dict[str, float]:
        """Area shares proportional to prior^2 (priors are heights), jittered, clipped to the bounds."""
        weights = {n: max(p, 1e-3) ** 2 * float(rng.uniform(1 - self.jitter, 1 + self.jitter)) for n, p in priors.items()}
        scale = self.fill / sum(weights.values())
        top = max(weights.values()) * scale
        if top > self.max_area:  # keep proportions but let the largest sit at the upper bound
            scale *= self.max_area / top
        return {n: float(np.clip(w * scale, self.min_area, self.max_area)) for n, w in weights.items()}

    def plan(self, aspects: dict[str, float], priors: dict[str, float], canvas: tuple[int, int], seed: int,
             background: str | None = None) -> Layout:
        if not aspects:
            raise LayoutError("no concepts to place", "no_concepts")
        width, height = canvas
        total = width * height
        # 2% inside the bounds so whole-pixel rounding never crosses them.
        lo_px, hi_px = self.min_area * total * 1.02, self.max_area * total * 0.98
        if len(aspects) * self.min_area > 0.9:
            raise LayoutError(f"{len(aspects)} concepts at >= {self.min_area:.0%} each cannot fit one canvas", "crowded")
        rng = np.random.default_rng([int(seed), 4242])
        fractions = self.target_fractions({n: priors.get(n, 0.5) for n in aspects}, rng)
        order = sorted(aspects, key=lambda n: -fractions[n])
        shrink = 1.0
        for _ in range(self.restarts):
            sizes = {n: box_size(aspects[n], min(max(fractions[n] * shrink * total, lo_px), hi_px), canvas, lo_px, hi_px)
                     for n in order}
            placed: dict[str, Box] = {}
            for name in order:
                w, h = sizes[name]
                for _ in range(self.tries):
                    x = int(rng.integers(0, width - w + 1))
                    y = int(rng.integers(0, height - h + 1))
                    box = Box(x, y, x + w, y + h)
                    if not any(box.overlaps(b) for b in placed.values()):
                        placed[name] = box
                        break
                else:
                    break
            if len(placed) == len(order):
                bg = background or self.backgrounds[int(rng.integers(len(self.backgrounds)))]
                layout = Layout(canvas=(width, height), boxes={n: placed[n] for n in aspects}, background=bg,
                                planner=self.name, notes=[] if shrink == 1.0 else [f"boxes shrunk to {shrink:.2f}x"])
                validate_layout(layout, aspects, min_area=self.min_area, max_area=self.max_area)
                return layout
            shrink *= 0.85
        raise LayoutError(f"could not place {len(order)} non-overlapping boxes on {width}x{height} after "
                          f"{self.restarts} attempts", "crowded")


def fit_box(box: Box, aspect: float) -> Box:
    """The largest box of ``aspect`` centred inside ``box`` (how an LLM's box is honoured exactly)."""
    w, h = box.width, box.height
    if w / h > aspect:
        nw, nh = max(1, int(round(h * aspect))), h
    else:
        nw, nh = w, max(1, int(round(w / aspect)))
    x0 = box.x0 + (w - nw) // 2
    y0 = box.y0 + (h - nh) // 2
    return Box(x0, y0, x0 + nw, y0 + nh)


__all__ = ["Box", "Layout", "LayoutError", "OfflinePlanner", "validate_layout", "fit_box", "MIN_AREA", "MAX_AREA",
           "BACKGROUNDS"]
