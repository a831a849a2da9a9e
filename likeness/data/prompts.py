"""Prompt sets in the Stellar-T schema: the open set likeness ships, and the official files.

The official Stellar prompts are gated, so likeness builds its own open set from templates and word
lists, deterministically (no randomness that depends on the machine or Python's hash seed). Every
entry has the Stellar-T keys (``prompts`` with a ``{}`` placeholder for the person, ``detectables``,
``categories``) plus ``relations``: (subject, predicate, object) triples that RFS scores, and a
stable ``prompt_id``. Official ``prompts_t.json`` / ``prompts_h.json`` files load through the same
:func:`load_prompts`, so the rest of likeness never knows where prompts came from.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

PLACEHOLDER = "{}"
# The person the placeholder stands for, as named in relation triples.
PERSON = "person"
OPEN_SET_NAME = "likeness-open-t"
OPEN_SET_VERSION = "v1"
OPEN_SET_FILE = Path(__file__).with_name("open_prompts_t.json")


class PromptError(ValueError):
    """A prompt file or entry that cannot be used; the message names the file and the entry."""


@dataclass(frozen=True)
class Prompt:
    prompt_id: str
    prompts: str  # Stellar's key name: the text, with "{}" where the person goes
    detectables: tuple[str, ...] = ()
    categories: tuple[str, ...] = ()
    relations: tuple[tuple[str, str, str], ...] = ()
    source: str = OPEN_SET_NAME
    # Gen4Gen metrics: the background alone (TI-CLIP) and the concepts to find, as (name, class label,
    # reference images) (CP-CLIP); both optional and written to the sidecar only when given.
    background: str = ""
    concepts: tuple[tuple[str, str, tuple[str, ...]], ...] = ()

    @property
    def template(self) -> str:
        return self.prompts

    def fill(self, subject: str) -> str:
        """The prompt with ``subject`` (e.g. "a photo of sks person") in place of ``{}``."""
        return self.prompts.replace(PLACEHOLDER, subject, 1)

    def sidecar_fields(self) -> dict:
        """The prompt's part of a generated image's canonical sidecar (``likeness.data.layout``)."""
        fields = self.to_dict()
        fields["prompt_template"] = fields.pop("prompts")
        return fields

    def to_dict(self) -> dict:
        out = {
            "prompt_id": self.prompt_id,
            "prompts": self.prompts,
            "detectables": list(self.detectables),
            "categories": list(self.categories),
            "relations": [list(r) for r in self.relations],
        }
        if self.background:
            out["background"] = self.background
        if self.concepts:
            out["concepts"] = [{"name": n, "label": label, "images": list(images)} for n, label, images in self.concepts]
        return out


# ---------------------------------------------------------------------------------------------
# Word lists. Each entry: (phrase as it reads in the prompt, detectable noun).
# Places carry their own preposition, which is also the relation predicate.
# ---------------------------------------------------------------------------------------------

FOOD = [
    ("an apple", "apple"), ("a banana", "banana"), ("an orange", "orange"), ("a slice of pizza", "pizza"),
    ("a hamburger", "hamburger"), ("a bowl of noodles", "noodles"), ("a croissant", "croissant"),
    ("a watermelon", "watermelon"), ("a cupcake", "cupcake"), ("a sandwich", "sandwich"),
    ("a pineapple", "pineapple"), ("a bunch of grapes", "grapes"), ("a donut", "donut"),
    ("an ice cream cone", "ice cream"), ("a hot dog", "hot dog"), ("a bowl of salad", "salad"),
]
FRUIT = [(p, d) for p, d in FOOD if d in {"apple", "banana", "orange", "watermelon", "pineapple", "grapes"}]
FRUIT_PLURAL = [
    ("apples", "apple"), ("oranges", "orange"), ("lemons", "lemon"), ("tomatoes", "tomato"),
    ("peaches", "peach"), ("coconuts", "coconut"),
]
LOCATIONS = [
    ("in", "a library", "library"), ("in", "a kitchen", "kitchen"), ("in", "a museum", "museum"),
    ("in", "a cafe", "cafe"), ("in", "a train station", "train station"), ("on", "a rooftop", "rooftop"),
    ("in", "a classroom", "classroom"), ("in", "a supermarket", "supermarket"), ("in front of", "the Eiffel Tower", "Eiffel Tower"),
    ("on", "a busy street in Tokyo", "street"), ("in front of", "a fountain in Rome", "fountain"), ("on", "a bridge in Venice", "bridge"),
    ("in front of", "a castle", "castle"), ("in", "a gym", "gym"), ("in", "a church", "church"), ("in", "a stadium", "stadium"),
]
VEHICLES = [
    ("a bicycle", "bicycle"), ("a motorcycle", "motorcycle"), ("a horse-drawn carriage", "carriage"),
    ("a red sports car", "car"), ("a scooter", "scooter"), ("a skateboard", "skateboard"), ("a bus", "bus"),
    ("a sailboat", "sailboat"), ("a tractor", "tractor"), ("a hot air balloon", "hot air balloon"),
    ("a train", "train"), ("a canoe", "canoe"),
]
ANIMALS = [
    ("a dog", "dog"), ("a cat", "cat"), ("a horse", "horse"), ("a parrot", "parrot"), ("a rabbit", "rabbit"),
    ("an owl", "owl"), ("a penguin", "penguin"), ("a goat", "goat"), ("a puppy", "puppy"), ("a turtle", "turtle"),
    ("an elephant", "elephant"), ("a fox", "fox"),
]
SPACE = [
    ("on", "the moon", "moon"), ("on", "Mars", "planet"), ("inside", "a space station", "space station"),
    ("next to", "a rocket", "rocket"), ("among", "the stars", "star"), ("next to", "a satellite", "satellite"),
    ("in front of", "a ringed planet", "planet"), ("inside", "a spaceship", "spaceship"),
]
NATURE = [
    ("next to", "a waterfall", "waterfall"), ("in", "a forest", "forest"), ("on", "a beach", "beach"),
    ("on", "a snowy mountain", "mountain"), ("among", "tall sunflowers", "sunflower"), ("near", "a volcano", "volcano"),
    ("in", "a desert", "desert"), ("next to", "a lake", "lake"), ("under", "a cherry blossom tree", "tree"),
    ("near", "a sunset", "sunset"), ("in", "a rainforest", "rainforest"), ("next to", "a river", "river"),
]
INSTRUMENTS = [
    ("a guitar", "guitar"), ("a violin", "violin"), ("a piano", "piano"), ("a trumpet", "trumpet"),
    ("a saxophone", "saxophone"), ("a drum", "drum"), ("a cello", "cello"), ("a flute", "flute"),
    ("an accordion", "accordion"), ("a harp", "harp"), ("a ukulele", "ukulele"), ("a banjo", "banjo"),
]
# Roles: (role, garment phrase, garment noun). The role word would match the person itself, so only
# the garment is detectable.
ROLES = [
    ("a chef", "a chef's hat", "chef's hat"), ("a firefighter", "a firefighter helmet", "firefighter helmet"),
    ("an astronaut", "a space suit", "space suit"), ("a doctor", "a stethoscope", "stethoscope"),
    ("a pirate", "a pirate hat", "pirate hat"), ("a police officer", "a police cap", "police cap"),
    ("a clown", "a red clown nose", "clown nose"), ("a construction worker", "a hard hat", "hard hat"),
    ("a knight", "shining armor", "armor"), ("a cowboy", "a cowboy hat", "cowboy hat"),
    ("a wizard", "a wizard hat", "wizard hat"), ("a pilot", "a pilot cap", "pilot cap"),
]
OBJECTS = [
    ("a book", "book"), ("an umbrella", "umbrella"), ("a cup of coffee", "cup"), ("a laptop", "laptop"),
    ("a camera", "camera"), ("a backpack", "backpack"), ("a lamp", "lamp"), ("a clock", "clock"),
    ("a teddy bear", "teddy bear"), ("a bouquet of flowers", "flowers"), ("a balloon", "balloon"),
    ("a suitcase", "suitcase"), ("a kite", "kite"), ("a vase", "vase"),
]
SEATS = [
    ("a couch", "couch"), ("a bench", "bench"), ("a rocking chair", "chair"), ("a picnic blanket", "blanket"),
    ("a hammock", "hammock"), ("a bed", "bed"),
]

CATEGORIES = ("food", "locations", "vehicles", "animals", "space", "nature", "instruments", "roles", "objects")

# ---------------------------------------------------------------------------------------------
# Templates: text with slots {a} and {b} (the person stays "{}"), the two word lists, categories,
# and relation triples where "a"/"b" stand for the slot's detectable and "@a"/"@b" for its place
# preposition.
# ---------------------------------------------------------------------------------------------


def _places(entries):
    """(preposition, phrase, noun) -> (phrase with its preposition, noun, preposition)."""
    return [(f"{prep} {phrase}", noun, prep) for prep, phrase, noun in entries]


def _roles(entries):
    return [(f"{role} in {garment}", noun, "") for role, garment, noun in entries]


@dataclass(frozen=True)
class Template:
    text: str
    a: list
    b: list
    categories: tuple[str, str]
    relations: tuple[tuple[str, str, str], ...]

    def build(self, a, b):
        slots = {"a": a, "b": b}

        def term(token: str) -> str:
            if token.startswith("@"):
                return slots[token[1:]][2]
            return slots[token][1] if token in slots else token

        text = self.text.replace("{a}", a[0]).replace("{b}", b[0])
        relations = [tuple(term(t) for t in triple) for triple in self.relations]
        return text, [a[1], b[1]], list(self.categories), relations, background(a, b)


def background(*slots) -> str:
    """The scene alone, for TI-CLIP: the first place slot's phrase without its preposition ("a library",
    "the moon"); "" when the prompt names no place (a role's slot carries no preposition)."""
    for slot in slots:
        if len(slot) == 3 and slot[2]:
            return slot[0][len(slot[2]):].strip()
    return ""


LOC, SPC, NAT, ROLE = _places(LOCATIONS), _places(SPACE), _places(NATURE), _roles(ROLES)
TEMPLATES = [
    Template("{} eating {a} {b}", FOOD, LOC, ("food", "locations"), ((PERSON, "eating", "a"), (PERSON, "@b", "b"))),
    Template("{} juggling {a} {b}", FRUIT_PLURAL, LOC, ("food", "locations"), ((PERSON, "juggling", "a"), (PERSON, "@b", "b"))),
    Template("{} riding {a} {b}", VEHICLES, SPC, ("vehicles", "space"), ((PERSON, "riding", "a"), ("a", "@b", "b"))),
    Template("{} riding {a} {b}", VEHICLES, NAT, ("vehicles", "nature"), ((PERSON, "riding", "a"), ("a", "@b", "b"))),
    Template("{} playing {a} {b}", INSTRUMENTS, LOC, ("instruments", "locations"), ((PERSON, "playing", "a"), (PERSON, "@b", "b"))),
    Template("{} playing {a} {b}", INSTRUMENTS, NAT, ("instruments", "nature"), ((PERSON, "playing", "a"), (PERSON, "@b", "b"))),
    Template("{} walking with {a} {b}", ANIMALS, NAT, ("animals", "nature"), ((PERSON, "walking with", "a"), (PERSON, "@b", "b"))),
    Template("{} feeding {b} to {a}", ANIMALS, FOOD, ("animals", "food"), ((PERSON, "feeding", "a"), (PERSON, "holding", "b"))),
    Template("{} dressed as {a} {b}", ROLE, LOC, ("roles", "locations"), ((PERSON, "wearing", "a"), (PERSON, "@b", "b"))),
    Template("{} dressed as {a} {b}", ROLE, SPC, ("roles", "space"), ((PERSON, "wearing", "a"), (PERSON, "@b", "b"))),
    Template("{} holding {a} {b}", OBJECTS, SPC, ("objects", "space"), ((PERSON, "holding", "a"), (PERSON, "@b", "b"))),
    Template("{} holding {a} {b}", OBJECTS, NAT, ("objects", "nature"), ((PERSON, "holding", "a"), (PERSON, "@b", "b"))),
    Template("{} and {a} sitting on {b}", ANIMALS, SEATS, ("animals", "objects"),
             ((PERSON, "sitting on", "b"), ("a", "sitting on", "b"), (PERSON, "next to", "a"))),
    Template("{} reading next to {b} with {a}", OBJECTS, VEHICLES, ("vehicles", "objects"), ((PERSON, "next to", "b"), (PERSON, "holding", "a"))),
    Template("{} sleeping on {a} {b}", SEATS, LOC, ("objects", "locations"), ((PERSON, "sleeping on", "a"), ("a", "@b", "b"))),
    Template("{} having a picnic with {a} {b}", FRUIT, NAT, ("food", "nature"), ((PERSON, "eating", "a"), (PERSON, "@b", "b"))),
    Template("{} playing {a} for {b}", INSTRUMENTS, ANIMALS, ("instruments", "animals"), ((PERSON, "playing", "a"), (PERSON, "next to", "b"))),
    Template("{} dressed as {a} driving {b}", ROLE, VEHICLES, ("roles", "vehicles"), ((PERSON, "wearing", "a"), (PERSON, "riding", "b"))),
]
# Picks per template: enough for >1000 prompts while every template keeps a fair share.
PER_TEMPLATE = 64


def build_open_prompts(per_template: int = PER_TEMPLATE) -> list[Prompt]:
    """Generate the open set. Each template's slot combinations are shuffled with a seed made from
    the template's name (stable across machines), then templates are interleaved round-robin, so the
    first N prompt ids already cover every template: a small subset is still a varied one."""
    columns = []
    for k, template in enumerate(TEMPLATES):
        combos = [(a, b) for a in template.a for b in template.b]
        random.Random(f"{OPEN_SET_NAME}/{OPEN_SET_VERSION}/{k}/{template.text}").shuffle(combos)
        columns.append([template.build(a, b) for a, b in combos[:per_template]])
    prompts, seen = [], set()
    for row in range(max(len(c) for c in columns)):
        for column in columns:
            if row >= len(column):
                continue
            text, detectables, categories, relations, scene = column[row]
            if text in seen:
                continue
            seen.add(text)
            prompts.append(
                Prompt(
                    prompt_id=f"t{len(prompts):04d}",
                    prompts=text,
                    detectables=tuple(detectables),
                    categories=tuple(categories),
                    relations=tuple(tuple(r) for r in relations),
                    background=scene,
                )
            )
    return prompts


@lru_cache(maxsize=1)
def open_prompts() -> tuple[Prompt, ...]:
    """The open prompt set, read from the shipped file (regenerate it with :func:`write_open_prompts`)."""
    return tuple(load_prompts(OPEN_SET_FILE, source=OPEN_SET_NAME))


def write_open_prompts(path: str | Path = OPEN_SET_FILE) -> Path:
    path = Path(path)
    data = {
        "name": OPEN_SET_NAME,
        "version": OPEN_SET_VERSION,
        "schema": "Stellar-T entries (prompts, detectables, categories) + prompt_id + relations + background (TI-CLIP)",
        "prompts": [p.to_dict() for p in build_open_prompts()],
    }
    path.write_text(json.dumps(data, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    return path


# ---------------------------------------------------------------------------------------------
# Loading: the open set, our JSON, or the official Stellar prompts_t.json / prompts_h.json.
# ---------------------------------------------------------------------------------------------


def _id_prefix(path: Path) -> str:
    return "h" if path.stem.endswith("_h") else "t"


def _entries(raw, path: Path) -> list:
    """Accept a list of entries, {"prompts": [entries]}, or column form {"prompts": [...], "detectables": [...]}."""
    if isinstance(raw, dict):
        inner = raw.get("prompts")
        if isinstance(inner, list) and inner and isinstance(inner[0], dict):
            return inner
        if isinstance(inner, list):
            n = len(inner)
            return [{k: (v[i] if isinstance(v, list) and len(v) == n else None) for k, v in raw.items()} for i in range(n)]
        raise PromptError(f"{path}: expected a list of prompt entries or a 'prompts' list")
    if isinstance(raw, list):
        return raw
    raise PromptError(f"{path}: expected a JSON list or object, got {type(raw).__name__}")


_PROMPT_ID = re.compile(r"^[A-Za-z0-9_]{1,64}$")


def _strings(value, key: str, where: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        raise PromptError(f"{where}: {key!r} must be a list of strings, got {value!r}"[:300])
    return tuple(value)


def parse_entry(entry, index: int, path: Path | str, prefix: str = "t", source: str = "") -> Prompt:
    """One Stellar-T/H entry (or a bare string) -> :class:`Prompt`; a bad entry raises naming file and index."""
    where = f"{path}: entry {index}"
    if isinstance(entry, str):
        entry = {"prompts": entry}
    if not isinstance(entry, dict):
        raise PromptError(f"{where}: expected an object or a string, got {type(entry).__name__}")
    text = entry.get("prompts", entry.get("prompt"))
    if not isinstance(text, str) or not text.strip():
        raise PromptError(f"{where}: has no prompt text (key 'prompts')")
    if PLACEHOLDER not in text:
        raise PromptError(f"{where}: prompt {text!r} has no '{{}}' placeholder for the person")
    relations = []
    raw_relations = entry.get("relations") or []
    if not isinstance(raw_relations, (list, tuple)):
        raise PromptError(f"{where}: 'relations' must be a list of (subject, predicate, object) triples")
    for triple in raw_relations:
        if not (isinstance(triple, (list, tuple)) and len(triple) == 3 and all(isinstance(t, str) for t in triple)):
            raise PromptError(f"{where}: relation {triple!r} is not a (subject, predicate, object) triple of strings")
        relations.append(tuple(triple))
    prompt_id = entry.get("prompt_id") or f"{prefix}{index:04d}"
    if not isinstance(prompt_id, (str, int)) or not _PROMPT_ID.match(str(prompt_id)):
        # ids become part of file names: letters, digits and "_" only (no "/", "..", "-")
        raise PromptError(f"{where}: prompt_id {prompt_id!r} must be 1-64 letters, digits or '_'")
    background = entry.get("background") or ""
    if not isinstance(background, str):
        raise PromptError(f"{where}: 'background' must be a string, got {background!r}"[:300])
    return Prompt(
        prompt_id=str(prompt_id),
        prompts=text,
        detectables=_strings(entry.get("detectables"), "detectables", where),
        categories=_strings(entry.get("categories"), "categories", where),
        relations=tuple(relations),
        source=source or str(path),
        background=background.strip(),
        concepts=_concepts(entry.get("concepts"), where),
    )


def _concepts(value, where: str) -> tuple[tuple[str, str, tuple[str, ...]], ...]:
    """``[{"name", "label", "images"}]`` (CP-CLIP's concepts; label: what the detector is asked for)."""
    if value is None:
        return ()
    if not isinstance(value, list):
        raise PromptError(f"{where}: 'concepts' must be a list of {{name, label, images}} objects")
    out = []
    for c in value:
        if not (isinstance(c, dict) and isinstance(c.get("name"), str) and c["name"].strip()):
            raise PromptError(f"{where}: concept {c!r} needs a 'name' string"[:300])
        label = c.get("label") or c["name"]
        if not isinstance(label, str):
            raise PromptError(f"{where}: concept {c['name']!r}: 'label' must be a string")
        out.append((c["name"], label, _strings(c.get("images"), f"concepts[{c['name']}].images", where)))
    return tuple(out)


def load_prompts(path: str | Path = "open", *, source: str = "") -> list[Prompt]:
    """Prompts from ``"open"`` (the shipped open set) or a JSON file in the Stellar-T/H schema."""
    if str(path) == "open":
        return list(open_prompts())
    path = Path(path)
    if not path.is_file():
        raise PromptError(f"{path}: prompt file does not exist")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise PromptError(f"{path}: not valid JSON ({type(exc).__name__}: {exc})"[:500]) from None
    prefix = _id_prefix(path)
    prompts = [parse_entry(e, i, path, prefix, source) for i, e in enumerate(_entries(raw, path))]
    if not prompts:
        raise PromptError(f"{path}: contains no prompts")
    ids = [p.prompt_id for p in prompts]
    if len(set(ids)) != len(ids):
        raise PromptError(f"{path}: prompt ids are not unique")
    return prompts


def select_prompts(
    prompts: list[Prompt] | tuple[Prompt, ...],
    *,
    limit: int | None = None,
    categories: list[str] | None = None,
    ids: list[str] | None = None,
) -> list[Prompt]:
    """A subset by id, by category (any match) and/or the first ``limit`` (ids stay the same)."""
    chosen = list(prompts)
    if ids:
        by_id = {p.prompt_id: p for p in chosen}
        unknown = [i for i in ids if i not in by_id]
        if unknown:
            raise PromptError(f"unknown prompt ids: {', '.join(unknown[:5])}")
        chosen = [by_id[i] for i in ids]
    if categories:
        wanted = set(categories)
        chosen = [p for p in chosen if wanted & set(p.categories)]
    if limit is not None:
        chosen = chosen[:limit]
    if not chosen:
        raise PromptError("the prompt selection is empty")
    return chosen


def prompts_digest(prompts) -> str:
    """A short hash of ids + texts: part of a run's configuration, so a changed prompt set is noticed."""
    h = hashlib.sha256()
    for p in prompts:
        h.update(f"{p.prompt_id}\t{p.prompts}\n".encode())
    return h.hexdigest()[:16]
