"""One place that decides how a person's display name becomes a key (file name, token, item id part).

A person is shown as they are called (``José García``, ``o'brien``, ``李雷``, ``Ana``), but the name
also ends up in folder and file names, in textual-inversion tokens (``<key>``), in item ids
(``<key>-<photo>-<prompt>-s<seed>``) and in Stellar ``save_name`` values (split on ``-``). So every
command maps a display name through :func:`name_key`, and finds people back through
:func:`lookup` / :func:`index_by_name`, which accept either form.

Rules of the key:

* the display name is NFC-normalised and stripped (``"Ana "`` and ``"Ana"`` are the same person);
* a name that is already a *clean* key (``[a-z0-9]+`` words joined by single ``_``, at most 48
  characters, not a Windows device name) is its own key: ``alice``, ``000``, ``alex_lacamoire``;
* any other name becomes an ASCII slug (accents folded, other characters to ``_``, lower case) plus
  ``__`` and 10 hex digits of the name's sha256: ``Ana`` -> ``ana__<hash>``, ``李雷`` -> ``id__<hash>``.

A clean key never contains ``__``, so a hashed key can never equal a clean one; two hashed keys
collide only if 40 bits of sha256 do, and :func:`check_unique` refuses that too. A key is its own
key (``name_key(name_key(x)) == name_key(x)``), so code handed a key where it expects a name does
the right thing; the price is that a person literally called ``ana__dea210f058`` would share the key
of ``Ana``, which :func:`check_unique` reports instead of merging them. Keys are ASCII,
lower case, contain no ``-``, ``/``, space or quote: safe as folder names on every OS, as CLIP
tokens (the tokenizer lower-cases text) and inside ids split on ``-``.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from typing import Iterable, Mapping, TypeVar

T = TypeVar("T")

MAX_SLUG = 48
HASH_DIGITS = 10
_CLEAN = re.compile(r"^[a-z0-9]+(?:_[a-z0-9]+)*$")
_HASHED = re.compile(r"^[a-z0-9]+(?:_[a-z0-9]+)*__[0-9a-f]{%d}$" % HASH_DIGITS)
# Names Windows refuses as file names, whatever the extension.
_RESERVED = {"con", "prn", "aux", "nul", *(f"com{i}" for i in range(10)), *(f"lpt{i}" for i in range(10))}


class IdentityNameError(ValueError):
    """A display name cannot be used (empty after normalisation, or two people map to one key)."""


def display_name(name: object) -> str:
    """The canonical form of a display name: NFC, surrounding whitespace removed, inner runs of
    whitespace kept as they are (they are part of how the person is written)."""
    text = unicodedata.normalize("NFC", str(name)).strip()
    if not text:
        raise IdentityNameError(f"identity name {name!r} is empty")
    if any(unicodedata.category(c) == "Cc" for c in text):
        raise IdentityNameError(f"identity name {name!r} contains control characters")
    return text


def _slug(text: str) -> str:
    folded = unicodedata.normalize("NFKD", text)
    ascii_text = "".join(c for c in folded if not unicodedata.combining(c)).encode("ascii", "ignore").decode()
    slug = re.sub(r"[^a-z0-9]+", "_", ascii_text.lower()).strip("_")
    return slug[:MAX_SLUG].strip("_") or "id"


def is_clean_key(text: str) -> bool:
    return len(text) <= MAX_SLUG and bool(_CLEAN.match(text)) and text not in _RESERVED


def is_hashed_key(text: str) -> bool:
    return len(text) <= MAX_SLUG + 2 + HASH_DIGITS and bool(_HASHED.match(text))


def name_key(name: object) -> str:
    """The key of a display name: a file, folder and token safe ASCII string, stable across runs
    and machines (it depends only on the name), different for different names."""
    text = display_name(name)
    if is_clean_key(text) or is_hashed_key(text):
        return text  # a key is its own key, so passing a key where a name is expected is harmless
    digest = hashlib.sha256(text.encode("utf-8")).hexdigest()[:HASH_DIGITS]
    return f"{_slug(text)}__{digest}"


def check_unique(names: Iterable[object]) -> dict[str, str]:
    """``{key: display name}`` for ``names``; raises when two different names share a key
    (the same name given twice, e.g. ``"Ana"`` and ``"Ana "``, is an error too)."""
    seen: dict[str, str] = {}
    for name in names:
        text = display_name(name)
        key = name_key(text)
        if key in seen:
            same = seen[key] == text
            raise IdentityNameError(
                f"identity {text!r} is given twice" if same else
                f"identities {seen[key]!r} and {text!r} map to the same key {key!r}; rename one")
        seen[key] = text
    return seen


def lookup(name: object, mapping: Mapping[str, T]) -> str | None:
    """The key of ``mapping`` (keyed by name keys) that ``name`` means: ``name`` itself when it is a
    key there, else the key of ``name`` as a display name; None when neither is present."""
    text = str(name)
    if text in mapping:
        return text
    try:
        key = name_key(text)
    except IdentityNameError:
        return None
    return key if key in mapping else None


def index_by_name(items: Iterable[T], name_of=lambda item: item.name) -> dict[str, T]:
    """``{display name and key: item}``, so an item can be found by either (e.g. a sidecar that
    records the display name, or a folder that is named by the key)."""
    index: dict[str, T] = {}
    for item in items:
        text = display_name(name_of(item))
        index.setdefault(name_key(text), item)
        index.setdefault(text, item)
    return index


__all__ = ["IdentityNameError", "check_unique", "display_name", "index_by_name", "is_clean_key", "is_hashed_key", "lookup", "name_key"]
