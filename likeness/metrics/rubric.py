"""The judge's rubric (version :data:`RUBRIC_VERSION`) and the parser of its answers.

Two questions on DreamBench++'s 0-4 scale, written for likeness (docs/judge.md says how they follow DreamBench++):
``identity`` shows the reference photo (image 1) and the generated image (image 2); ``prompt`` shows the generated
image and its prompt (``{}`` -> "a person"). The model answers "Reason: <one sentence>" then "Score: <0-4>".

:func:`parse_answer` never guesses: an answer without a score line is ``parse_failed``, two different scores are
``parse_failed`` (ambiguous), a score outside 0-4 (or on another scale, "7/10", or not a whole number) is
``out_of_range``, an answer that declines without a score is ``refused``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

RUBRIC_VERSION = "rubric-v1"
ASPECTS = ("identity", "prompt")
SCALE = (0, 4)

_ANSWER_FORMAT = """Answer in exactly two lines:
Reason: <one short sentence>
Score: <0, 1, 2, 3 or 4>"""

IDENTITY = f"""You are judging a personalized image generator. Image 1 is a reference photo of a person. Image 2 was \
generated to show the same person in a new scene.
Rate how well Image 2 preserves the identity of the person in Image 1:
4 - the same person: face shape, eyes, nose, mouth, skin tone, apparent age and hair agree; no noticeable difference.
3 - very likely the same person: minor differences in one or two facial features.
2 - a resemblance, but clear differences in several facial features (a relative or a look-alike).
1 - little resemblance: only broad traits such as gender or hair colour match.
0 - a different person, or no person or face is visible in Image 2.
Judge identity only. Ignore pose, expression, clothing, lighting, background, art style and image quality: the \
prompt may change them on purpose.
{_ANSWER_FORMAT}"""

PROMPT = """You are judging a text-to-image generator. The image was generated from this prompt:
"{prompt}"
Rate how well the image follows the prompt:
4 - every element of the prompt (subject, action, objects, setting, style) is shown correctly.
3 - the main content is right; one minor element is missing or wrong.
2 - part of the prompt is shown, but an important element is missing or wrong.
1 - only a small part of the prompt is recognisable.
0 - the image has nothing to do with the prompt.
Judge prompt following only. Ignore who the person is and how beautiful the image is.
""" + _ANSWER_FORMAT


def question(aspect: str, prompt: str | None = None) -> str:
    """The request text for ``aspect`` (the prompt is needed for ``prompt``)."""
    if aspect == "identity":
        return IDENTITY
    if aspect == "prompt":
        return PROMPT.replace("{prompt}", " ".join(str(prompt).split()))
    raise ValueError(f"unknown judge aspect {aspect!r}; known: {', '.join(ASPECTS)}")


@dataclass
class ParsedAnswer:
    status: str  # ok | parse_failed | out_of_range | refused
    score: int | None
    reason: str
    problem: str = ""


_SCORE = re.compile(r"score\**\s*(?:[:=]|is)\s*\**\s*(-?\d+(?:[.,]\d+)?)\s*\**(?:\s*(?:/|out of)\s*(\d+))?", re.IGNORECASE)
_REASON = re.compile(r"reason\**\s*[:=]\s*\**\s*(.+)", re.IGNORECASE)
_REFUSAL = re.compile(r"\b(i\s+(?:can\s*not|can't|cannot|won't|am\s+(?:not\s+able|unable)|'m\s+(?:not\s+able|unable))|"
                      r"sorry|as an ai|unable to (?:assess|evaluate|judge|identify|compare|help))\b", re.IGNORECASE)
REASON_CHARS = 300


def parse_answer(text: str) -> ParsedAnswer:
    """Score and reason from the judge's answer, or a named status; never a guessed score."""
    text = (text or "").replace("’", "'").strip()
    found = _SCORE.findall(text)
    reason_match = _REASON.search(text)
    if reason_match:
        reason = _SCORE.split(reason_match.group(1))[0]
    else:  # no "Reason:" line: what is left of a scored answer; nothing from an unreadable one (kept in full elsewhere)
        reason = _SCORE.sub("", text) if found else ""
    reason = " ".join(reason.split())[:REASON_CHARS]
    if not found:
        if _REFUSAL.search(text):
            return ParsedAnswer("refused", None, reason, "the judge declined to answer")
        return ParsedAnswer("parse_failed", None, reason, "no 'Score: <0-4>' line in the answer")
    values = {(v.replace(",", "."), d) for v, d in found}
    if len(values) > 1:
        return ParsedAnswer("parse_failed", None, reason, f"ambiguous: several scores ({', '.join(v for v, _ in sorted(values))})")
    value, denominator = values.pop()
    number = float(value)
    low, high = SCALE
    if denominator and int(denominator) != high:
        return ParsedAnswer("out_of_range", None, reason, f"score {value}/{denominator} is not on the 0-4 scale")
    if not number.is_integer() or not low <= number <= high:
        return ParsedAnswer("out_of_range", None, reason, f"score {value} is not one of 0, 1, 2, 3, 4")
    return ParsedAnswer("ok", int(number), reason)
