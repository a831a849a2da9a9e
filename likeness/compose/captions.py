"""Captions for composed images.

Default: templates, no model. Gen4Gen's prompting strategy (``strategy="gen4gen"``), as read here:

1. a **global composition token** opens the caption (default ``<gen4gen>``), one token shared by all
   composed images, so the model can attribute "a composed multi-concept scene" to it;
2. **concept tokens repeated**: the scene sentence names each concept as ``<token> class``, then a
   second clause lists them again, so each token appears twice and binds to its object;
3. an **explicit background** clause ("in the background, ...").

e.g. ``"<gen4gen> a photo of <mochi> dog and <kettle> teapot, with <mochi> dog and <kettle> teapot,
in the background a sunny garden"``. ``strategy="plain"``: ``"a photo of <mochi> dog and <kettle>
teapot in a sunny garden"``.

:class:`VLMCaptioner` asks a transformers vision-language model (hub id or folder) for a short
description (<= 30 words, as Gen4Gen), then makes sure every concept is named by its token.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

GLOBAL_TOKEN = "<gen4gen>"
TEMPLATES = ("a photo of {objects} {where}", "a picture of {objects} {where}", "a realistic photo of {objects} {where}",
             "{objects} together {where}")
MAX_WORDS = 30


def join_phrases(phrases: list[str]) -> str:
    if len(phrases) <= 1:
        return "".join(phrases)
    return ", ".join(phrases[:-1]) + " and " + phrases[-1]


def where(background: str) -> str:
    background = background.strip()
    return background if re.match(r"^(in|on|at|by|near|under|inside)\b", background) else f"in {background}"


class TemplateCaptioner:
    name = "template"

    def __init__(self, strategy: str = "gen4gen", global_token: str = GLOBAL_TOKEN, templates=TEMPLATES):
        if strategy not in ("gen4gen", "plain"):
            raise ValueError(f"caption strategy must be 'gen4gen' or 'plain', not {strategy!r}")
        self.strategy, self.global_token, self.templates = strategy, global_token, tuple(templates)

    def caption(self, phrases: list[str], background: str, rng: np.random.Generator, image=None) -> str:
        objects = join_phrases(phrases)
        if self.strategy == "plain":
            template = self.templates[int(rng.integers(len(self.templates)))]
            return template.format(objects=objects, where=where(background)).strip()
        return f"{self.global_token} a photo of {objects}, with {objects}, in the background {background.strip()}"


def ensure_tokens(text: str, phrases: list[str], class_nouns: list[str]) -> str:
    """Replace the first mention of each class noun by its ``<token> class`` phrase; append unnamed ones."""
    missing = []
    for phrase, noun in zip(phrases, class_nouns):
        if phrase in text:
            continue
        pattern = re.compile(rf"\b(?:an?|the)?\s*{re.escape(noun)}\b", re.I)
        text, n = pattern.subn(f"a {phrase}", text, count=1)
        if not n:
            missing.append(phrase)
    if missing:
        text = text.rstrip(". ") + ", with " + join_phrases(missing)
    return re.sub(r"\s+", " ", text).strip()


class VLMCaptioner:
    """A vision-language model rewrites the caption from the image (transformers ``AutoModelForImageTextToText``
    + ``AutoProcessor``), then the paper's strategy is applied around its description."""

    name = "vlm"

    def __init__(self, model_id: str | Path, *, prompt: str | None = None, max_new_tokens: int = 48,
                 strategy: str = "gen4gen", global_token: str = GLOBAL_TOKEN, device=None):
        import torch
        from transformers import AutoModelForImageTextToText, AutoProcessor

        from likeness.models.pretrained import load_pretrained

        self.model_id = str(model_id)
        self.device = torch.device(device or "cpu")
        self.processor = load_pretrained(AutoProcessor, self.model_id, what="captioning model")
        self.model = load_pretrained(AutoModelForImageTextToText, self.model_id, what="captioning model",
                                     device=self.device).eval()
        self.prompt, self.max_new_tokens = prompt, max_new_tokens
        self.strategy, self.global_token = strategy, global_token

    def describe(self, image) -> str:
        """At most :data:`MAX_WORDS` words. Chat models (a processor with a chat template) get an
        instruction with the image; captioning models (BLIP-style) caption unconditionally, or
        continue ``prompt`` when one is given."""
        import torch

        chat = bool(getattr(self.processor, "chat_template", None))
        kwargs = {"images": image.convert("RGB"), "return_tensors": "pt"}
        if chat:
            messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": self.prompt or
                         f"Describe this image in one sentence of at most {MAX_WORDS} words."}]}]
            kwargs["text"] = self.processor.apply_chat_template(messages, add_generation_prompt=True)
        elif self.prompt:
            kwargs["text"] = self.prompt
        inputs = self.processor(**kwargs).to(self.device)
        with torch.no_grad():
            ids = self.model.generate(**inputs, max_new_tokens=self.max_new_tokens, do_sample=False)
        if chat:  # decoder-only: the answer follows the prompt tokens
            ids = ids[:, inputs["input_ids"].shape[1]:]
        text = self.processor.batch_decode(ids, skip_special_tokens=True)[0]
        return " ".join(text.replace("\n", " ").split()[:MAX_WORDS])

    def caption(self, phrases: list[str], background: str, rng: np.random.Generator, image=None,
                class_nouns: list[str] | None = None) -> str:
        described = self.describe(image) if image is not None else ""
        nouns = class_nouns or [p.split(" ", 1)[-1] for p in phrases]
        text = ensure_tokens(described or f"a photo of {join_phrases(phrases)}", phrases, nouns)
        if self.strategy == "plain":
            return text
        return f"{self.global_token} {text}, with {join_phrases(phrases)}, in the background {background.strip()}"
