"""Property-based tests: every parser of a file likeness did not write returns a value or its own
named error, whatever the file holds (random JSON, near-valid records, random bytes)."""

from __future__ import annotations

import itertools
import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from likeness.data.base import DatasetError
from likeness.data.layout import GeneratedItem, read_canonical_item, read_generated
from likeness.data.prompts import Prompt, PromptError, load_prompts, parse_entry
from likeness.data.stellar import CELEBA_ATTRIBUTES, parse_attributes
from likeness.methods.base import ArtifactError, Manifest

SETTINGS = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
_counter = itertools.count()

scalars = st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=True) | st.text(max_size=12)
json_values = st.recursive(scalars, lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=8), kids, max_size=4),
                           max_leaves=12)
# Near-valid: the keys the parsers look for, with any values.
prompt_entries = st.fixed_dictionaries({}, optional={
    "prompts": st.sampled_from(["{} on a couch", "no placeholder", "", "{}"]) | json_values,
    "prompt_id": st.sampled_from(["t0001", "../x", "a b", ""]) | json_values,
    "detectables": json_values, "categories": json_values, "relations": json_values,
})
attribute_files = st.fixed_dictionaries({}, optional={
    "attributes": st.dictionaries(st.sampled_from(CELEBA_ATTRIBUTES), json_values, max_size=5)
    | st.lists(st.sampled_from([1, -1, 0, "1", 2, None]), min_size=40, max_size=40) | json_values,
    "identity": json_values,
})
sidecars = st.fixed_dictionaries({}, optional={
    "item_id": json_values, "identity": st.sampled_from(["ann", "Ann", "../x"]) | json_values,
    "reference": st.sampled_from(["0.jpg", "/etc/passwd", "0", ""]) | json_values,
    "save_name": json_values, "image_path": st.sampled_from(["ann/0.jpg", "../../x", ""]) | json_values,
})
manifests = st.fixed_dictionaries({}, optional={
    "method": json_values, "base_model": st.fixed_dictionaries({"model_id": st.text(max_size=5), "family": st.just("sd1"),
                                                                "revision": st.text(max_size=5)}) | json_values,
    "identities": st.dictionaries(st.sampled_from(["astro", "Ana", "../x", "ana__dea210f058"]),
                                  st.fixed_dictionaries({"subject": st.text(max_size=5), "tokens": json_values,
                                                         "photos": json_values}) | json_values, max_size=3) | json_values,
    "config": json_values, "sampling": json_values,
})


def _content(value) -> bytes:
    return value if isinstance(value, bytes) else json.dumps(value, allow_nan=True).encode()


any_file = json_values | prompt_entries | st.lists(prompt_entries, max_size=3) | st.binary(max_size=64)


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    return tmp_path_factory.mktemp("prop")


def _write(work, name: str, value) -> "Path":  # noqa: F821
    folder = work / f"case{next(_counter)}"
    folder.mkdir()
    path = folder / name
    path.write_bytes(_content(value))
    return path


@SETTINGS
@given(any_file)
def test_prompt_files_load_or_raise_prompt_error(work, value):
    path = _write(work, "prompts_t.json", value)
    try:
        prompts = load_prompts(path)
    except PromptError as exc:
        assert str(path) in str(exc)
        return
    assert prompts and all(isinstance(p, Prompt) and "{}" in p.prompts for p in prompts)
    assert all(all(isinstance(d, str) for d in p.detectables) for p in prompts)


@SETTINGS
@given(json_values | prompt_entries)
def test_prompt_entries_parse_or_raise_prompt_error(value):
    try:
        prompt = parse_entry(value, 3, "f.json")
    except PromptError as exc:
        assert "f.json: entry 3" in str(exc)
        return
    assert "/" not in prompt.prompt_id and "-" not in prompt.prompt_id and prompt.fill("x")


@SETTINGS
@given(attribute_files | json_values | st.binary(max_size=64))
def test_stellar_attribute_files_parse_or_raise_dataset_error(work, value):
    path = _write(work, "0_attributes.json", value)
    try:
        labels = parse_attributes(path)
    except DatasetError as exc:
        assert exc.path == str(path)
        return
    assert all(isinstance(k, str) and v in (1, -1) for k, v in labels.items())


@SETTINGS
@given(sidecars | json_values | st.binary(max_size=64), st.booleans())
def test_sidecars_always_give_an_item_with_a_status(work, astronaut_path, value, flat):
    from likeness.data.base import Identity

    folder = work / f"case{next(_counter)}"
    people = {"ann": Identity("ann", [astronaut_path])}
    image_dir = folder if flat else folder / "ann"
    image_dir.mkdir(parents=True)
    image = image_dir / "ann-0-00.png"
    image.write_bytes(b"not decoded by the reader")
    image.with_suffix(".json").write_bytes(_content(value))
    item = read_canonical_item(image, people) if not flat else read_generated(folder, list(people.values()))[0]
    assert isinstance(item, GeneratedItem) and item.item_id == "ann-0-00" and isinstance(item.status, str)
    assert item.status == "ok" or item.problem
    if item.status == "ok":
        assert item.reference == astronaut_path  # only ever the dataset's own photo


@SETTINGS
@given(manifests | json_values | st.binary(max_size=64))
def test_manifests_load_or_raise_artifact_error(work, value):
    path = _write(work, "likeness.json", value)
    try:
        manifest = Manifest.load(path.parent)
    except ArtifactError as exc:
        assert str(path.parent) in str(exc)
        return
    assert isinstance(manifest.identities, dict) and all(".." not in k and "/" not in k for k in manifest.identities)
