"""One visitor's work folder: checked photos, the prompt file, and one benchmark run folder per method.

Every visitor of the demo gets a folder of their own under the demo's root, named after their
session, so two people's photos never meet. Inside it the layout is likeness's normal one::

    <root>/<visitor>/identities/<name>/0.png ...   the uploaded photos (checked, re-encoded as PNG)
    <root>/<visitor>/prompts.json                   the prompts, in the Stellar-T schema
    <root>/<visitor>/runs/<method>/                  a `likeness bench` run folder per method

so ``likeness report <root>/<visitor>/runs/<method>`` and ``likeness bench --resume --out ...`` work on
what the demo made. Uploads are checked before anything is written: size on disk, decodable image,
pixel count, exactly one face.

The web page's upload cache (gradio's ``GRADIO_TEMP_DIR``) is ``<root>/.cache``: uploads arrive there
(named by their content), and the files the page offers for download are written to
``<root>/.cache/<visitor>/``, inside it, so the page serves them without another copy. Both go when the
visitor's folder goes (:meth:`Workspace.remove`, :meth:`likeness.app.demo.Demo.leave`).
"""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from likeness.data.images import ImageError, image_to_array, load_image
from likeness.data.prompts import PLACEHOLDER, Prompt, load_prompts, select_prompts
from likeness.data.names import name_key

MAX_UPLOAD_BYTES = 20 * 1024 * 1024  # enforced by the web page before an upload is stored, and again here
CACHE_DIR = ".cache"  # under the demo's root; never a visitor id (those have no dot)
MAX_UPLOAD_PIXELS = 40_000_000  # a 40 MP photo is plenty; larger uploads are refused, not decoded
MAX_PHOTOS = 8
MAX_PROMPTS = 16
# Faces are looked for on a copy no larger than this (HOG on a 6000 px photo takes seconds).
DETECT_SIDE = 1024
# A second face with at least this fraction of the largest one's area and detection score makes the photo ambiguous.
SIMILAR_FACE = 0.5
_VISITOR = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


class UploadError(ValueError):
    """A photo or prompt the demo cannot use; the message is shown to the visitor as it is."""


@dataclass
class PhotoCheck:
    name: str  # the file name the visitor uploaded
    ok: bool
    message: str
    saved: Path | None = None


def mebibytes(size: int) -> str:
    """``20 MiB``, ``20.5 MiB``: the unit the limit is set in (20 x 1024 x 1024 bytes is not "21 MB")."""
    return f"{size / 2**20:.1f}".removesuffix(".0") + " MiB"


def visitor_folder(root: str | Path, visitor: str) -> Path:
    """``root/visitor``; the visitor id comes from the web session and must be a plain token."""
    if not _VISITOR.match(str(visitor)):
        raise UploadError(f"invalid visitor id {visitor!r}")
    return Path(root) / visitor


def find_faces(image, backend) -> list:
    """The faces the backend finds (largest first), on a copy at most DETECT_SIDE px long."""
    scale = DETECT_SIDE / max(image.size)
    if scale < 1:
        image = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))))
    return sorted(backend.detect(image_to_array(image)), key=lambda face: face.area, reverse=True)


def check_photo(path: str | Path, backend) -> tuple[object | None, str]:
    """(RGB image, note) for a usable photo of one person, else (None, the reason in plain words).

    Several faces are refused only when another face is about as large and as confidently detected
    as the largest (a group photo: whose likeness is meant?); a small or weak extra detection is
    noted, and the largest face is the one methods use, as everywhere in likeness.
    """
    path = Path(path)
    try:
        size = path.stat().st_size
    except OSError:
        return None, "the upload did not arrive (file missing)"
    if size > MAX_UPLOAD_BYTES:
        return None, f"file is too large ({mebibytes(size)}, limit {mebibytes(MAX_UPLOAD_BYTES)})"
    try:
        image = load_image(path, max_pixels=MAX_UPLOAD_PIXELS)
    except ImageError as exc:
        return None, exc.problem
    faces = find_faces(image, backend)
    if not faces:
        return None, "no face found; upload a clear, front-facing photo of one person"
    main = faces[0]
    rivals = [f for f in faces[1:] if f.area >= SIMILAR_FACE * main.area and f.score >= SIMILAR_FACE * main.score]
    if rivals:
        return None, f"{len(rivals) + 1} faces of similar size found; upload a photo of one person only"
    if len(faces) > 1:
        return image, f"ok ({len(faces)} faces found; the largest is used)"
    return image, "ok"


class Workspace:
    """A visitor's folder. Created on first use; :meth:`remove` deletes everything in it."""

    def __init__(self, root: str | Path, visitor: str):
        self.folder = visitor_folder(root, visitor)
        self.downloads = Path(root) / CACHE_DIR / visitor  # served by the page from its cache (see above)

    @property
    def identities(self) -> Path:
        return self.folder / "identities"

    @property
    def runs(self) -> Path:
        return self.folder / "runs"

    def run_dir(self, method: str) -> Path:
        return self.runs / method

    def save_photos(self, uploads: list[str | Path], name: str, backend) -> list[PhotoCheck]:
        """Check every upload and keep the usable ones as ``identities/<name>/<k>.png``.

        The previous photos of the visitor are replaced: one person at a time.
        """
        if not uploads:
            raise UploadError("upload at least one photo")
        if len(uploads) > MAX_PHOTOS:
            raise UploadError(f"{len(uploads)} photos uploaded; at most {MAX_PHOTOS}")
        checks = []
        kept = []
        for upload in uploads:
            image, note = check_photo(upload, backend)
            checks.append(PhotoCheck(Path(upload).name, image is not None, note))
            if image is not None:
                kept.append((checks[-1], image))
        person = self.identities / name_key(name or "me")
        shutil.rmtree(self.identities, ignore_errors=True)
        for k, (check, image) in enumerate(kept):
            person.mkdir(parents=True, exist_ok=True)
            check.saved = person / f"{k}.png"
            image.save(check.saved)
        return checks

    def photos(self) -> list[Path]:
        return sorted(self.identities.glob("*/*.png"))

    def write_prompts(self, typed: str, category: str | None = None, from_open_set: int = 0) -> Path:
        """The visitor's prompts (one per line, each with ``{}``) plus the first ``from_open_set`` open-set
        prompts of ``category``, as a Stellar-T JSON file; typed prompts get ids ``d00``, ``d01``, ..."""
        lines = [line.strip() for line in (typed or "").splitlines() if line.strip()]
        missing = [line for line in lines if PLACEHOLDER not in line]
        if missing:
            raise UploadError(
                f"prompt {missing[0]!r} has no {{}} where the person goes; write it like '{{}} riding a bicycle'"
            )
        entries = [Prompt(prompt_id=f"d{k:02d}", prompts=line, source="demo").to_dict() for k, line in enumerate(lines)]
        if from_open_set:
            chosen = select_prompts(load_prompts("open"), categories=[category] if category else None,
                                    limit=int(from_open_set))
            entries += [p.to_dict() for p in chosen]
        if not entries:
            raise UploadError("type a prompt (with {} for the person) or pick some from the open prompt set")
        if len(entries) > MAX_PROMPTS:
            raise UploadError(f"{len(entries)} prompts; at most {MAX_PROMPTS} per run")
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.folder / "prompts.json"
        path.write_text(json.dumps(entries, indent=1, ensure_ascii=False), encoding="utf-8")
        return path

    def remove(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)
        shutil.rmtree(self.downloads, ignore_errors=True)
