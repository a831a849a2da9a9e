"""Concepts to compose: a name (its token), a class noun, photos, and a relative-size prior.

Gen4Gen places a dog, a teapot and a person on one canvas at plausible relative sizes; the LLM
planner knows those sizes, the offline planner reads them from :data:`SIZE_PRIORS` (roughly the
object's real height relative to an adult, squashed so that small things stay visible). A concept
folder is ``<root>/<name>/`` with photos; its class noun comes from ``class.txt`` in the folder,
``NAME=FOLDER:CLASS`` on the command line, or the folder name.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

# Relative display size (1.0 = the largest kind of thing on a typical canvas). Unknown classes: 0.5.
SIZE_PRIORS = {
    "person": 1.0, "man": 1.0, "woman": 1.0, "child": 0.75, "boy": 0.75, "girl": 0.75, "baby": 0.5,
    "dog": 0.6, "cat": 0.45, "puppy": 0.45, "kitten": 0.35, "horse": 1.0, "bird": 0.25, "rabbit": 0.3,
    "car": 1.0, "bicycle": 0.85, "chair": 0.7, "sofa": 0.9, "table": 0.75, "plant": 0.55, "lamp": 0.6,
    "backpack": 0.4, "bag": 0.35, "guitar": 0.6, "teddy": 0.35, "toy": 0.3, "bear": 0.9,
    "mug": 0.2, "cup": 0.2, "teapot": 0.25, "vase": 0.3, "bottle": 0.25, "shoe": 0.2, "sneaker": 0.2,
    "book": 0.2, "clock": 0.25, "flower": 0.25, "bowl": 0.2, "candle": 0.2, "hat": 0.2, "glasses": 0.15,
}
DEFAULT_PRIOR = 0.5


def size_prior(class_noun: str) -> float:
    """Prior of the class noun's last word ("teddy bear" -> bear, "red mug" -> mug)."""
    words = class_noun.lower().split()
    for word in reversed(words):
        if word in SIZE_PRIORS:
            return SIZE_PRIORS[word]
        if word.endswith("s") and word[:-1] in SIZE_PRIORS:
            return SIZE_PRIORS[word[:-1]]
    return DEFAULT_PRIOR


@dataclass
class Concept:
    name: str  # safe name: token is "<name>"
    class_noun: str
    photos: list[Path]
    size: float | None = None  # relative-size prior; None = from the class noun
    notes: list[str] = field(default_factory=list)

    @property
    def token(self) -> str:
        return f"<{self.name}>"

    @property
    def phrase(self) -> str:
        """How captions name the concept: ``"<mochi> dog"``."""
        return f"{self.token} {self.class_noun}"

    @property
    def prior(self) -> float:
        return float(self.size if self.size is not None else size_prior(self.class_noun))


def concept_from_folder(path: str | Path, name: str | None = None, class_noun: str | None = None) -> Concept:
    """A concept from a photo or a folder of photos (sorted), ``class.txt`` giving the class noun."""
    from likeness.methods.base import safe_name
    from likeness.methods.preparation import identity_photos

    path = Path(path)
    photos = identity_photos(path)
    if class_noun is None and path.is_dir() and (path / "class.txt").is_file():
        class_noun = (path / "class.txt").read_text(encoding="utf-8").strip()
    base = name or (path.name if path.is_dir() else path.stem)
    noun = (class_noun or base).strip().lower()
    if not noun:
        raise ValueError(f"{path}: concept has no class noun")
    return Concept(name=safe_name(base), class_noun=noun, photos=photos)


def parse_concept_spec(spec: str) -> Concept:
    """``NAME=PATH[:CLASS]`` or ``PATH[:CLASS]`` (command-line form)."""
    name, sep, rest = spec.partition("=")
    if not sep:
        name, rest = None, spec
    path, colon, noun = rest.rpartition(":") if ":" in rest and not Path(rest).exists() else (rest, "", "")
    return concept_from_folder(path if colon else rest, name=name, class_noun=noun or None)
