import pytest

from likeness.methods import METHODS
from likeness.metrics import METRICS
from likeness.registry import Registry


def test_builtin_names_are_registered():
    assert {"textual-inversion", "dreambooth-lora", "celeb-basis"} <= set(METHODS.names())
    assert {"ips", "sis", "aps"} <= set(METRICS.names())


def test_underscore_and_hyphen_spellings_find_the_same_entry():
    registry = Registry("thing")
    registry.register("two_words")(dict)
    assert registry.names() == ["two-words"]
    assert registry.get("two_words") is registry.get("Two-Words") is dict
    assert "two_words" in registry


def test_unknown_and_duplicate_names_are_clear_errors():
    registry = Registry("thing")
    registry.register("alpha")(dict)
    with pytest.raises(KeyError, match="unknown thing 'beta'; known: alpha"):
        registry.get("beta")
    with pytest.raises(ValueError, match="registered twice"):
        registry.register("alpha")(list)
