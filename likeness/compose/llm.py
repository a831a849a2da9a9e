"""An LLM layout planner through any OpenAI-compatible chat-completions endpoint (stdlib HTTP only).

Gen4Gen asks an LLM for bounding boxes and a background in the few-shot style of LLM-grounded
diffusion (LMD). Here: a system message with the rules, two worked examples, then the request
("objects: <mochi> dog (aspect 1.30), ..."). The answer must be one JSON object::

    {"objects": [{"name": "mochi", "box": [x, y, width, height]}, ...], "background": "..."}

It is parsed, checked against a schema, each box fitted to its concept's aspect ratio inside what the
LLM proposed, and the result validated with :func:`likeness.compose.layout.validate_layout`. Invalid
JSON, a wrong schema, overlapping or mis-sized boxes go back to the LLM with the reason (bounded
retries); timeouts and unreachable servers are retried with backoff. Every failure mode ends in
:class:`LLMPlanError` (naming the last reason) within ``retries x timeout``: never a hang. The model
name and the number of attempts are recorded in the layout.
"""

from __future__ import annotations

import json
import logging
import re
import socket
import time
import urllib.error
import urllib.request

from likeness.compose.layout import MAX_AREA, MIN_AREA, Box, Layout, LayoutError, fit_box, validate_layout

log = logging.getLogger(__name__)

SYSTEM_PROMPT = """You are an intelligent bounding box generator. I will give you a list of objects with their \
aspect ratios (width / height) and the canvas size. Place every object in a realistic scene: give each a \
bounding box [x, y, width, height] in pixels, top-left origin, inside the canvas. Rules: each box covers \
between {min_pct}% and {max_pct}% of the canvas area; boxes do not overlap; each box has the object's aspect \
ratio; relative sizes are realistic (a person is larger than a dog, a dog larger than a mug). Also describe \
a background that fits all objects, in at most 12 words. Answer with one JSON object only, no prose: \
{{"objects": [{{"name": "...", "box": [x, y, width, height]}}], "background": "..."}}"""

FEW_SHOT = [
    ("Canvas: 1024x1024. Objects: max (dog, aspect 1.20); bella (cat, aspect 0.80).",
     {"objects": [{"name": "max", "box": [96, 520, 420, 350]}, {"name": "bella", "box": [600, 560, 240, 300]}],
      "background": "a cozy living room with a wooden floor"}),
    ("Canvas: 1024x1024. Objects: anna (person, aspect 0.50); kettle (teapot, aspect 1.30); rex (dog, aspect 1.00).",
     {"objects": [{"name": "anna", "box": [80, 300, 250, 500]}, {"name": "kettle", "box": [420, 640, 208, 160]},
                  {"name": "rex", "box": [700, 560, 300, 300]}],
      "background": "a sunny kitchen with a large window"}),
]

SCHEMA_HINT = '{"objects": [{"name": str, "box": [x, y, width, height]}], "background": str}'


class LLMPlanError(RuntimeError):
    """The LLM gave no valid layout. ``status``: unreachable | timeout | http_error | invalid_json | invalid_schema | invalid_layout."""

    def __init__(self, message: str, status: str, attempts: int):
        self.status = status
        self.attempts = attempts
        super().__init__(message)


def extract_json(text: str) -> dict:
    """The JSON object in a reply (bare, or fenced in ```json ... ```); ``ValueError`` when there is none."""
    text = text.strip()
    fenced = re.search(r"```(?:json)?\s*(\{.*\})\s*```", text, re.S)
    if fenced:
        text = fenced.group(1)
    elif not text.startswith("{"):
        start, end = text.find("{"), text.rfind("}")
        if start < 0 or end <= start:
            raise ValueError("reply contains no JSON object")
        text = text[start:end + 1]
    value = json.loads(text)
    if not isinstance(value, dict):
        raise ValueError("reply JSON is not an object")
    return value


def parse_layout(reply: dict, aspects: dict[str, float], canvas: tuple[int, int]) -> tuple[dict[str, Box], str]:
    """Schema check: exactly the requested names, 4 finite numbers per box, a background string."""
    objects = reply.get("objects")
    background = reply.get("background")
    if not isinstance(objects, list) or not isinstance(background, str) or not background.strip():
        raise ValueError(f"reply must match {SCHEMA_HINT}")
    boxes: dict[str, Box] = {}
    for item in objects:
        if not isinstance(item, dict) or not isinstance(item.get("name"), str) or not isinstance(item.get("box"), list):
            raise ValueError(f"each object must be {{\"name\": str, \"box\": [x, y, width, height]}}, got {item!r}")
        values = item["box"]
        if len(values) != 4 or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and abs(v) < 1e7 for v in values):
            raise ValueError(f"box of {item['name']!r} must be 4 numbers, got {values!r}")
        name = item["name"].strip().strip("<>")
        if name in boxes:
            raise ValueError(f"object {name!r} appears twice")
        x, y, w, h = (float(v) for v in values)
        if w <= 0 or h <= 0:
            raise ValueError(f"box of {name!r} has no area: {values!r}")
        boxes[name] = Box(int(round(x)), int(round(y)), int(round(x + w)), int(round(y + h)))
    if set(boxes) != set(aspects):
        raise ValueError(f"reply names {sorted(boxes)}; expected exactly {sorted(aspects)}")
    return {n: fit_box(boxes[n], aspects[n]) for n in aspects}, background.strip()


class LLMPlanner:
    """Boxes and background from an OpenAI-compatible ``/chat/completions`` endpoint.

    ``base_url`` e.g. ``http://127.0.0.1:8000/v1``; ``api_key`` is sent as a bearer token when given.
    """

    name = "llm"

    def __init__(self, base_url: str, model: str, *, api_key: str | None = None, timeout: float = 30.0,
                 retries: int = 3, backoff: float = 0.5, temperature: float = 0.2, min_area: float = MIN_AREA,
                 max_area: float = MAX_AREA, json_mode: bool = False):
        if retries < 1:
            raise ValueError("retries must be >= 1")
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.model, self.api_key, self.timeout, self.retries = model, api_key, float(timeout), int(retries)
        self.backoff, self.temperature, self.min_area, self.max_area = backoff, temperature, min_area, max_area
        self.json_mode = json_mode

    def messages(self, concepts: dict[str, tuple[str, float]], canvas: tuple[int, int]) -> list[dict]:
        """``concepts``: name -> (class noun, aspect)."""
        system = SYSTEM_PROMPT.format(min_pct=round(self.min_area * 100), max_pct=round(self.max_area * 100))
        msgs = [{"role": "system", "content": system}]
        for question, answer in FEW_SHOT:
            msgs += [{"role": "user", "content": question}, {"role": "assistant", "content": json.dumps(answer)}]
        objects = "; ".join(f"{name} ({noun}, aspect {aspect:.2f})" for name, (noun, aspect) in concepts.items())
        msgs.append({"role": "user", "content": f"Canvas: {canvas[0]}x{canvas[1]}. Objects: {objects}."})
        return msgs

    def _post(self, messages: list[dict]) -> str:
        body = {"model": self.model, "messages": messages, "temperature": self.temperature}
        if self.json_mode:
            body["response_format"] = {"type": "json_object"}
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        request = urllib.request.Request(self.url, data=json.dumps(body).encode(), headers=headers, method="POST")
        with urllib.request.urlopen(request, timeout=self.timeout) as response:  # noqa: S310 (user-given endpoint)
            payload = json.loads(response.read(4_000_000).decode("utf-8"))
        try:
            return payload["choices"][0]["message"]["content"] or ""
        except (KeyError, IndexError, TypeError):
            raise ValueError(f"not a chat-completions response: {str(payload)[:200]}") from None

    def plan(self, concepts: dict[str, tuple[str, float]], canvas: tuple[int, int], seed: int = 0,
             background: str | None = None) -> Layout:
        aspects = {n: a for n, (_, a) in concepts.items()}
        messages = self.messages(concepts, canvas)
        reasons: list[str] = []
        status = "invalid_layout"
        for attempt in range(1, self.retries + 1):
            try:
                content = self._post(messages)
            except (socket.timeout, TimeoutError) as exc:
                status, reason = "timeout", f"no answer within {self.timeout:g} s ({exc})"
            except urllib.error.HTTPError as exc:
                status, reason = "http_error", f"HTTP {exc.code} from {self.url}"
            except urllib.error.URLError as exc:
                timed_out = isinstance(exc.reason, (socket.timeout, TimeoutError))
                status = "timeout" if timed_out else "unreachable"
                reason = f"{self.url} unreachable ({exc.reason})"
            except (ValueError, UnicodeDecodeError, ConnectionError, OSError) as exc:
                status, reason = "http_error", f"bad response from {self.url} ({exc})"
            else:
                try:
                    reply = extract_json(content)
                except ValueError as exc:
                    status, reason = "invalid_json", f"invalid JSON ({exc})"
                else:
                    try:
                        boxes, bg = parse_layout(reply, aspects, canvas)
                        layout = Layout(canvas=tuple(canvas), boxes=boxes, background=background or bg,
                                        planner=f"llm:{self.model}", notes=[f"attempts: {attempt}"] + reasons)
                        validate_layout(layout, aspects, min_area=self.min_area, max_area=self.max_area)
                        return layout
                    except ValueError as exc:  # LayoutError is a ValueError
                        status = "invalid_layout" if isinstance(exc, LayoutError) else "invalid_schema"
                        reason = str(exc)
                # Tell the model what was wrong and ask again (the LMD-style correction turn).
                messages = messages + [{"role": "assistant", "content": content},
                                       {"role": "user", "content": f"That answer is not valid: {reason}. Answer again "
                                                                   f"with one JSON object {SCHEMA_HINT} obeying every rule."}]
            reasons.append(f"attempt {attempt}: {reason}")
            log.warning("LLM planner %s", reasons[-1])
            if status in ("timeout", "unreachable", "http_error") and attempt < self.retries:
                time.sleep(self.backoff * attempt)
        raise LLMPlanError(f"LLM planner ({self.model} at {self.url}) gave no valid layout after {self.retries} "
                           f"attempt(s): {'; '.join(reasons)}", status, self.retries)
