"""Layout planners: every box obeys every rule, for many random concept sets (property-based)."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from likeness.compose.layout import (
    MAX_AREA,
    MIN_AREA,
    Box,
    Layout,
    LayoutError,
    OfflinePlanner,
    aspect_tolerance,
    fit_box,
    validate_layout,
)

concept_sets = st.dictionaries(
    keys=st.text(alphabet="abcdefghij", min_size=1, max_size=6),
    values=st.tuples(st.floats(0.33, 3.0), st.floats(0.1, 1.0)),  # (aspect, size prior)
    min_size=1, max_size=5,
)
canvases = st.sampled_from([(128, 128), (256, 256), (512, 384), (1024, 1024), (768, 1024)])


def check_rules(layout: Layout, aspects: dict[str, float]) -> None:
    """The rules, restated independently of validate_layout."""
    width, height = layout.canvas
    assert set(layout.boxes) == set(aspects)
    boxes = list(layout.boxes.items())
    for name, box in boxes:
        assert 0 <= box.x0 < box.x1 <= width and 0 <= box.y0 < box.y1 <= height
        assert MIN_AREA <= box.area / (width * height) <= MAX_AREA
        assert abs(box.width / box.height - aspects[name]) <= aspect_tolerance(box)
    for i, (a, ba) in enumerate(boxes):
        for b, bb in boxes[i + 1:]:
            disjoint = ba.x1 <= bb.x0 or bb.x1 <= ba.x0 or ba.y1 <= bb.y0 or bb.y1 <= ba.y0
            assert disjoint, (a, b, ba, bb)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(concepts=concept_sets, canvas=canvases, seed=st.integers(0, 2**31 - 1))
def test_offline_planner_obeys_every_rule(concepts, canvas, seed):
    aspects = {n: a for n, (a, _) in concepts.items()}
    priors = {n: p for n, (_, p) in concepts.items()}
    planner = OfflinePlanner()
    layout = planner.plan(aspects, priors, canvas, seed)
    check_rules(layout, aspects)
    validate_layout(layout, aspects)
    again = planner.plan(aspects, priors, canvas, seed)
    assert again.to_dict() == layout.to_dict()  # seeded: the same plan every time


@settings(max_examples=60, deadline=None)
@given(aspect=st.floats(0.05, 20.0), seed=st.integers(0, 1000))
def test_extreme_concepts_are_placed_or_refused_with_a_reason(aspect, seed):
    try:
        layout = OfflinePlanner().plan({"x": aspect}, {"x": 1.0}, (256, 256), seed)
    except LayoutError as exc:
        assert exc.status == "cannot_fit" and "aspect" in str(exc)
    else:
        check_rules(layout, {"x": aspect})


def test_relative_size_priors_order_the_areas():
    aspects = {"person": 0.5, "dog": 1.2, "mug": 1.0}
    priors = {"person": 1.0, "dog": 0.6, "mug": 0.2}
    for seed in range(10):
        boxes = OfflinePlanner(jitter=0.0).plan(aspects, priors, (1024, 1024), seed).boxes
        assert boxes["person"].area > boxes["dog"].area > boxes["mug"].area


def test_too_many_concepts_is_refused():
    with pytest.raises(LayoutError, match="cannot fit") as info:
        OfflinePlanner().plan({str(i): 1.0 for i in range(31)}, {}, (512, 512), 0)
    assert info.value.status == "crowded"


def test_validate_layout_names_the_broken_rule():
    aspects = {"a": 1.0, "b": 1.0}
    ok = Layout((100, 100), {"a": Box(0, 0, 40, 40), "b": Box(50, 50, 90, 90)}, "bg")
    validate_layout(ok, aspects)
    cases = {
        "overlap": {"a": Box(0, 0, 40, 40), "b": Box(30, 30, 70, 70)},
        "too_small": {"a": Box(0, 0, 10, 10), "b": Box(50, 50, 90, 90)},
        "too_large": {"a": Box(0, 0, 60, 60), "b": Box(60, 60, 90, 90)},
        "outside_canvas": {"a": Box(70, 70, 110, 110), "b": Box(0, 0, 40, 40)},
        "aspect": {"a": Box(0, 0, 40, 20), "b": Box(50, 50, 90, 90)},
    }
    for status, boxes in cases.items():
        with pytest.raises(LayoutError) as info:
            validate_layout(Layout((100, 100), boxes, "bg"), aspects)
        assert info.value.status == status


def test_fit_box_keeps_aspect_inside_the_given_box():
    fitted = fit_box(Box(10, 10, 110, 60), 1.0)
    assert (fitted.width, fitted.height) == (50, 50) and fitted.x0 == 35 and fitted.y0 == 10
    tall = fit_box(Box(0, 0, 40, 100), 2.0)
    assert (tall.width, tall.height) == (40, 20) and tall.y0 == 40
