"""The batched identity engine: dlib's face pipeline with detection spread over every core and the descriptor
computed in batches by the torch port (on a GPU when there is one).

Why: the dlib backend runs one image at a time on one core; large evaluations are bound by it.
Here worker processes (one per core, ``spawn``ed so torch and dlib state never cross a fork)
each hold a :class:`~likeness.faces.dlib_backend.DlibBackend` and do what only dlib does well on a
CPU: decode the image, detect (HOG, MMOD or MTCNN), find the 5 points and cut the 150 px chip.
The parent gathers chips from many images and runs :class:`~likeness.faces.dlib_resnet.DlibResNet`
on batches of them.

The descriptor equals dlib's to within 1e-4 per element (tested), so the backend keeps the dlib
backend's protocol name (numbers are comparable); the protocol's ``engine`` field records how they
were computed.
"""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

import numpy as np

from likeness.faces import BACKENDS
from likeness.faces.base import Face, FaceBackend

_worker = None  # the DlibBackend of a worker process


def _init_worker(detector: str, upsample, model_dir) -> None:
    global _worker
    import torch

    torch.set_num_threads(1)
    from likeness.faces.dlib_backend import DlibBackend

    _worker = DlibBackend(detector=detector, upsample=upsample, model_dir=model_dir)


def _detect_array(image: np.ndarray, backend=None):
    backend = backend or _worker
    faces = backend.detect(image)
    return faces, backend.chips(image, faces)


def _detect_path(path: str, backend=None):
    """(status, problem, size, faces, chips) for one file, with analyze_path's statuses."""
    from likeness.data.images import ImageError, image_to_array, load_image

    backend = backend or _worker
    try:
        image = load_image(path)
    except ImageError as exc:
        return exc.status, str(exc), None, [], None
    try:
        array = image_to_array(image)
        faces = backend.detect(array)
        chips = backend.chips(array, faces)
    except Exception as exc:
        return "failed", f"{path}: face backend failed ({type(exc).__name__}: {exc})", image.size, [], None
    if not faces:
        from likeness.faces.cache import no_face_result

        result = no_face_result(backend, array, path, image.size)
        return result.status, result.problem, image.size, [], None
    return "ok", "", image.size, faces, chips


@BACKENDS.register("dlib-torch")
class BatchedDlibBackend(FaceBackend):
    """``detector``: hog / mmod / mtcnn, as the dlib backend; ``workers``: processes (default: every core;
    0 = in this process); ``batch_size``: chips per descriptor batch; ``device``: torch device (default cuda if
    available)."""

    embedding_dim = 128

    def __init__(self, detector: str = "hog", upsample: int | None = None, model_dir: str | Path | None = None,
                 workers: int | None = None, batch_size: int = 32, device: str | None = None,
                 threads: int | None = None):
        import torch

        from likeness.faces.dlib_backend import DlibBackend
        from likeness.faces.dlib_resnet import DAT_NAME, load_dlib_resnet

        self._local = DlibBackend(detector=detector, upsample=upsample, model_dir=model_dir)
        self._options = (self._local.detector_kind, upsample, None if model_dir is None else str(model_dir))
        self.workers = (os.cpu_count() or 1) if workers is None else int(workers)
        self.batch_size = int(batch_size)
        # torch intra-op threads for the descriptor on a CPU: the cores the pool leaves (at least 1). With 2 threads
        # on a busy 2-core machine a chip cost 0.06-0.19 s instead of 0.006-0.012 s (profiled: the threads spin
        # against the detection workers and other processes), slower than dlib's own descriptor.
        self.threads = max(1, (os.cpu_count() or 1) - max(0, self.workers)) if threads is None else int(threads)
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        dat = Path(model_dir) / DAT_NAME if model_dir else None
        self.net = load_dlib_resnet(dat, device=self.device)
        self._pool = None
        self.protocol = replace(self._local.protocol, engine=(
            f"likeness batched engine: {self.workers} detection process(es), torch port of the dlib ResNet "
            f"(equal to dlib within 1e-4) in batches of {self.batch_size} on {self.device.type}"
            + (f" ({self.threads} thread(s))" if self.device.type == "cpu" else "")))

    def calibrate(self, cosine):
        return self._local.calibrate(cosine)

    # -- the process pool ---------------------------------------------------------------------------------

    def _map(self, fn, items: list):
        if self.workers <= 0 or len(items) <= 1:
            return [fn(item, self._local) for item in items]
        if self._pool is None:
            import multiprocessing as mp

            self._pool = mp.get_context("spawn").Pool(self.workers, initializer=_init_worker, initargs=self._options)
        return self._pool.map(fn, items, chunksize=max(1, len(items) // (4 * self.workers)))

    def close(self) -> None:
        if self._pool is not None:
            self._pool.terminate()
            self._pool = None

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass

    # -- descriptors ---------------------------------------------------------------------------------------

    def descriptors(self, chips: np.ndarray) -> np.ndarray:
        """(N, 150, 150, 3) uint8 chips -> (N, 128) L2-normalised descriptors, in batches."""
        import torch

        out = []
        before = torch.get_num_threads()
        if self.device.type == "cpu":
            torch.set_num_threads(self.threads)
        try:
            for start in range(0, len(chips), self.batch_size):
                batch = torch.from_numpy(np.ascontiguousarray(chips[start : start + self.batch_size]))
                with torch.no_grad():
                    raw = self.net(batch.to(self.device).permute(0, 3, 1, 2).float())
                out.append(torch.nn.functional.normalize(raw, dim=1).cpu().numpy())
        finally:
            torch.set_num_threads(before)
        return np.concatenate(out) if out else np.zeros((0, 128), np.float32)

    def _fill(self, faces_per_image: list[list[Face]], chips_per_image: list) -> None:
        chips = [c for c in chips_per_image if c is not None and len(c)]
        if not chips:
            return
        vectors = iter(self.descriptors(np.concatenate(chips)))
        for faces in faces_per_image:
            for face in faces:
                face.embedding = next(vectors).astype(np.float32)

    # -- the FaceBackend interface ------------------------------------------------------------------------

    def detect(self, image: np.ndarray) -> list[Face]:
        return self._local.detect(image)

    def small_faces(self, image: np.ndarray) -> list[Face]:
        return self._local.small_faces(image)

    def embed(self, image: np.ndarray, faces: list[Face]) -> list[Face]:
        if faces:
            self._fill([faces], [self._local.chips(image, faces)])
        return faces

    def analyze(self, images: list[np.ndarray]) -> list[list[Face]]:
        results = self._map(_detect_array, list(images))
        faces = [r[0] for r in results]
        self._fill(faces, [r[1] for r in results])
        return faces

    def analyze_paths(self, paths) -> list:
        """:class:`~likeness.faces.cache.FaceResult` per file (same statuses as ``analyze_path``), decoding and
        detection in the workers, descriptors batched across files."""
        from likeness.faces.cache import FaceResult

        results = self._map(_detect_path, [str(p) for p in paths])
        faces = [r[3] for r in results]
        self._fill(faces, [r[4] for r in results])
        return [FaceResult(status=s, faces=f, problem=problem, size=size) for (s, problem, size, _, _), f in zip(results, faces)]
