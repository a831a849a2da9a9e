"""The judge's model: an open vision-language model (Qwen2.5-VL / Qwen3-VL class, role ``judge``, ``--judge-model``)
that answers a rubric about one or two images, greedily, in batches, with every answer cached.

Loading: ``AutoModelForImageTextToText`` + ``AutoTokenizer`` + ``AutoImageProcessor`` from a hub id, a local
folder written by ``save_pretrained``, or the tiny id ``likeness/tiny-qwen-vl``; on the device and in the dtype
given (default: the best device, fp32 on CPU, bf16/fp16 on GPUs: ``likeness.models.loading.pick_dtype``).
transformers' Qwen processors also insist on a video processor, which needs torchvision; the judge never sends
video, so it builds the inputs the way those processors do: the model's chat template renders the turn, each
image placeholder ``<|image_pad|>`` is repeated ``t*h*w / merge_size**2`` times (the image's grid from the image
processor), and ``mm_token_type_ids`` marks those tokens (the model derives its 3-D rotary positions from it).
Images are resized to at most :data:`MAX_PIXELS` pixels (aspect kept), a cost bound recorded in the protocol.

Decoding: :data:`DECODING` (greedy, at most 128 new tokens), left-padded batches of ``batch_size`` requests.

Cache: one SQLite table (``$LIKENESS_JUDGE_CACHE``, default ``<likeness cache>/judge-answers.sqlite``) keyed by a
hash of (model id, revision, dtype, decoding, pixel bound, rubric version, the content hash of every image, the
full request text). A rerun, another store, or another metric asking the same question reads the answer back
instead of generating it again.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from likeness.models.loading import model_revision, pick_device, pick_dtype
from likeness.models.vision_language import LOADERS, VisionModelError, _batches, _load

DECODING = {"do_sample": False, "max_new_tokens": 128}
MIN_PIXELS = 56 * 56
MAX_PIXELS = 512 * 512  # about 330 image tokens at Qwen2.5-VL's 28-px merged patches


@dataclass
class JudgeRequest:
    """One question: images (PIL, in the order the text refers to them), the text, the rubric version."""

    images: list
    text: str
    rubric: str


@dataclass
class JudgeAnswer:
    text: str
    cached: bool
    key: str


def image_hash(image) -> str:
    """Content hash of the decoded pixels (mode, size, bytes): the same picture in PNG or JPEG-lossless hashes alike."""
    digest = hashlib.sha256(f"{image.mode}:{image.size}".encode())
    digest.update(image.tobytes())
    return digest.hexdigest()


def judge_revision(model_id: str) -> str:
    """Which weights: the hub commit (a snapshot folder or the local hub cache), a hash of a folder's configs,
    or the tiny model's version; ``unresolved`` for a hub id not in the local cache."""
    from likeness.models.tiny_vision import TINY_VISION_MODELS, TINY_VISION_VERSION

    if model_id in TINY_VISION_MODELS:
        return f"tiny-{TINY_VISION_VERSION}"
    local = Path(model_id).expanduser()
    if local.is_dir():
        return model_revision(model_id, local.resolve())
    if model_id.count("/") == 1:
        from huggingface_hub import try_to_load_from_cache

        found = try_to_load_from_cache(model_id, "config.json")
        if isinstance(found, str) and Path(found).parent.parent.name == "snapshots":
            return Path(found).parent.name
    return "unresolved"


def default_cache_path() -> Path:
    from likeness.models.tiny import cache_root

    return Path(os.environ.get("LIKENESS_JUDGE_CACHE") or cache_root() / "judge-answers.sqlite")


class AnswerCache:
    """key -> answer text, in SQLite (WAL; several processes may share it)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path, timeout=60)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("CREATE TABLE IF NOT EXISTS answers (key TEXT PRIMARY KEY, model TEXT, revision TEXT, "
                         "rubric TEXT, answer TEXT NOT NULL, created REAL)")
        self._db.commit()

    def get(self, keys: list[str]) -> dict[str, str]:
        found = {}
        for chunk in _batches(list(keys), 500):
            marks = ",".join("?" * len(chunk))
            found.update(self._db.execute(f"SELECT key, answer FROM answers WHERE key IN ({marks})", chunk).fetchall())
        return found

    def put(self, rows: list[tuple[str, str, str, str, str]]) -> None:
        """(key, model, revision, rubric, answer) rows."""
        now = time.time()
        with self._db:
            self._db.executemany("INSERT OR REPLACE INTO answers VALUES (?, ?, ?, ?, ?, ?)", [(*r, now) for r in rows])

    def __len__(self) -> int:
        return self._db.execute("SELECT COUNT(*) FROM answers").fetchone()[0]


class JudgeModel:
    def __init__(self, role: str, model_id: str, model, tokenizer, image_processor, device: torch.device,
                 dtype: torch.dtype, batch_size: int = 4, cache: AnswerCache | None = None, max_pixels: int = MAX_PIXELS):
        self.role, self.model_id, self.model, self.tokenizer = role, model_id, model, tokenizer
        self.image_processor, self.device, self.dtype, self.batch_size = image_processor, device, dtype, batch_size
        self.cache = cache if cache is not None else AnswerCache(default_cache_path())
        self.max_pixels = max_pixels
        self.revision = judge_revision(model_id)
        self.image_token_id = int(model.config.image_token_id)
        self.image_token = tokenizer.convert_ids_to_tokens(self.image_token_id)
        self.merge = int(getattr(image_processor, "merge_size", 2))
        self.tokenizer.padding_side = "left"  # a decoder's batch is padded on the left so every answer starts together
        self.generated = 0  # requests that went through generate (not the cache), for tests and the benchmark
        self.generate_calls = 0

    def describe(self) -> dict:
        """What the protocol records about the judge's model and decoding."""
        return {"model": self.model_id, "revision": self.revision, "class": type(self.model).__name__,
                "dtype": str(self.dtype).replace("torch.", ""), "decoding": dict(DECODING), "max_pixels": self.max_pixels}

    def key(self, request: JudgeRequest) -> str:
        spec = {"model": self.model_id, "revision": self.revision, "dtype": str(self.dtype), "decoding": DECODING,
                "max_pixels": self.max_pixels, "rubric": request.rubric, "images": [image_hash(im) for im in request.images],
                "text": request.text}
        return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()

    def answer(self, requests: list[JudgeRequest]) -> list[JudgeAnswer]:
        keys = [self.key(r) for r in requests]
        known = self.cache.get(keys)
        todo = [k for k, key in enumerate(keys) if key not in known]
        fresh: dict[int, str] = {}
        for chunk in _batches(todo, max(1, self.batch_size)):
            texts = self._generate([requests[k] for k in chunk])
            fresh.update(zip(chunk, texts))
            self.cache.put([(keys[k], self.model_id, self.revision, requests[k].rubric, fresh[k]) for k in chunk])
        return [JudgeAnswer(known[key], True, key) if key in known else JudgeAnswer(fresh[k], False, key)
                for k, key in enumerate(keys)]

    def prompt(self, request: JudgeRequest) -> str:
        """The chat-templated turn (one image placeholder per image, then the text), ready for generation."""
        content = [{"type": "image"} for _ in request.images] + [{"type": "text", "text": request.text}]
        return self.tokenizer.apply_chat_template([{"role": "user", "content": content}], tokenize=False,
                                                  add_generation_prompt=True)

    def inputs(self, requests: list[JudgeRequest]) -> dict:
        """The model's keyword arguments for a left-padded batch of requests (what a Qwen-VL processor would give)."""
        images = [im for r in requests for im in r.images]
        vision = self.image_processor(images=images, size={"shortest_edge": MIN_PIXELS, "longest_edge": self.max_pixels},
                                      return_tensors="pt")
        counts = iter((vision["image_grid_thw"].prod(dim=-1) // self.merge ** 2).tolist())
        texts = []
        for r in requests:
            parts = self.prompt(r).split(self.image_token)
            if len(parts) - 1 != len(r.images):
                raise ValueError(f"the chat template of {self.model_id} placed {len(parts) - 1} image tokens for "
                                 f"{len(r.images)} images")
            texts.append(parts[0] + "".join(self.image_token * next(counts) + part for part in parts[1:]))
        tokens = self.tokenizer(texts, padding=True, return_tensors="pt", add_special_tokens=False)
        input_ids = tokens["input_ids"].to(self.device)
        return {"input_ids": input_ids, "attention_mask": tokens["attention_mask"].to(self.device),
                "mm_token_type_ids": (input_ids == self.image_token_id).int(),
                "pixel_values": vision["pixel_values"].to(self.device, self.dtype),
                "image_grid_thw": vision["image_grid_thw"].to(self.device)}

    @torch.no_grad()
    def _generate(self, requests: list[JudgeRequest]) -> list[str]:
        inputs = self.inputs(requests)
        out = self.model.generate(**inputs, pad_token_id=self.tokenizer.pad_token_id,
                                  eos_token_id=self.model.generation_config.eos_token_id or self.tokenizer.eos_token_id,
                                  **DECODING)
        self.generated += len(requests)
        self.generate_calls += 1
        return self.tokenizer.batch_decode(out[:, inputs["input_ids"].shape[1]:], skip_special_tokens=True)


def processor_chat_template(source, local_files_only: bool) -> str | None:
    """The processor's chat template (``chat_template.jinja`` or ``chat_template.json``) when the tokenizer has none
    (some Qwen-VL repos keep it beside the processor only)."""
    for name in ("chat_template.jinja", "chat_template.json"):
        path = Path(source) / name
        if not path.is_file() and not Path(source).exists():
            from huggingface_hub import hf_hub_download

            try:
                path = Path(hf_hub_download(str(source), name, local_files_only=local_files_only))
            except Exception:  # absent from the repo or the cache: try the next name
                continue
        if path.is_file():
            text = path.read_text(encoding="utf-8")
            return text if name.endswith(".jinja") else json.loads(text).get("chat_template")
    return None


def load_judge(role: str, model_id: str, device=None, batch_size: int = 4, dtype=None,
               cache_path: str | Path | None = None) -> JudgeModel:
    from transformers import AutoConfig, AutoImageProcessor, AutoModelForImageTextToText, AutoTokenizer

    torch_device = pick_device(device)
    torch_dtype = pick_dtype(torch_device, dtype)

    def loader(source, local_files_only):
        config = AutoConfig.from_pretrained(source, local_files_only=local_files_only)
        if not hasattr(config, "image_token_id"):
            raise VisionModelError(role, model_id, f"the judge needs a Qwen2.5-VL / Qwen3-VL class model (one with "
                                                   f"image tokens), not model_type {config.model_type!r}")
        model = AutoModelForImageTextToText.from_pretrained(source, local_files_only=local_files_only, dtype=torch_dtype)
        tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=local_files_only)
        image_processor = AutoImageProcessor.from_pretrained(source, local_files_only=local_files_only)
        tokenizer.chat_template = tokenizer.chat_template or processor_chat_template(source, local_files_only)
        if not tokenizer.chat_template:
            raise VisionModelError(role, model_id, "it has no chat template (an instruction-tuned model is needed)")
        return model, tokenizer, image_processor

    model, tokenizer, image_processor = _load(role, model_id, loader)
    cache = AnswerCache(cache_path) if cache_path else None
    return JudgeModel(role, model_id, model.to(torch_device).eval(), tokenizer, image_processor, torch_device, torch_dtype,
                      batch_size, cache)


load_judge.takes_dtype = True
# Its default (dtype None) is the plan's: half on GPUs. VisionModels.runtime asks, so the protocol name says so.
load_judge.resolved_dtype = lambda device, dtype: pick_dtype(pick_device(device), dtype)
LOADERS["judge"] = load_judge
