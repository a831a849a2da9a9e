"""GrabCut (Rother, Kolmogorov, Blake, SIGGRAPH 2004): a classical foreground extractor for ordinary photos.

No model weights, so it runs offline on any photo (JPEG, no alpha channel). Written here from the paper with
numpy and scipy:

1. a rectangle a thin ``border`` inside the photo: outside is known background, inside is unknown and
   starts as foreground;
2. colour models: a Gaussian mixture (``components`` full-covariance Gaussians, the paper's K = 5) for the
   foreground and one for the background, fitted to the current labelling;
3. an energy per pixel: data term ``-log p(colour | model)`` for each label, plus a contrast-sensitive Potts
   smoothness term between 8-neighbours, ``gamma * exp(-beta * |z_m - z_n|^2) / dist(m, n)`` with the
   paper's ``gamma = 50`` and ``beta = 1 / (2 <|z_m - z_n|^2>)``;
4. its global minimum for fixed models: a minimum s-t cut (maximum flow with
   :func:`scipy.sparse.csgraph.maximum_flow`, capacities scaled to integers);
5. 2-4 repeated ``iterations`` times (each round can only lower the energy).

It runs on a copy of the photo scaled to ``work_size`` pixels on its long side (the cut is the slow part)
and returns the mask at the photo's size, bilinear, so edges are soft. Its assumption: the object lies
inside the photo and the border strip is background; cluttered borders or an object that fills the frame
make it fail, which :func:`likeness.segmentation.salient.extract_foreground` then reports
(``whole_image`` / ``no_foreground`` and the mask quality record).
"""

from __future__ import annotations

import numpy as np
from PIL import Image

# The scale from float energies to the integer capacities the max-flow solver takes: 1/100 of a nat.
CAPACITY_SCALE = 100.0
HARD = 10_000_000  # capacity of "this pixel is known background" (larger than any finite cut)


def _neighbour_pairs(height: int, width: int):
    """Index pairs (a, b) of 8-connected neighbours, each once, and their distances (1 or sqrt 2)."""
    index = np.arange(height * width).reshape(height, width)
    pairs, dists = [], []
    for dy, dx in ((0, 1), (1, 0), (1, 1), (1, -1)):
        a = index[:height - dy, max(0, -dx):width - max(0, dx)]
        b = index[dy:, max(0, dx):width - max(0, -dx)]
        pairs.append((a.ravel(), b.ravel()))
        dists.append(np.full(a.size, np.hypot(dy, dx)))
    first = np.concatenate([p[0] for p in pairs])
    second = np.concatenate([p[1] for p in pairs])
    return first, second, np.concatenate(dists)


class ColourModel:
    """A Gaussian mixture over RGB colours in [0, 1] (full covariances): k-means++ start, then a few rounds of
    expectation-maximisation; refitted from its current state to each new labelling."""

    def __init__(self, samples: np.ndarray, components: int, seed: int, steps: int = 10):
        from scipy.cluster.vq import kmeans2

        k = max(1, min(components, len(samples) // 20))
        labels = kmeans2(samples, k, seed=seed, minit="++", iter=5)[1] if k > 1 else np.zeros(len(samples), int)
        responsibilities = np.zeros((len(samples), k))
        responsibilities[np.arange(len(samples)), labels] = 1.0
        self._m_step(samples, responsibilities)
        self.refit(samples, steps)

    def _m_step(self, samples: np.ndarray, responsibilities: np.ndarray) -> None:
        mass = responsibilities.sum(axis=0)
        keep = mass > 2.0  # a component that lost its pixels is dropped
        r, mass = responsibilities[:, keep], mass[keep]
        self.log_weights = np.log(mass / mass.sum())
        self.means = (r.T @ samples) / mass[:, None]
        d = samples[:, None, :] - self.means[None]
        covariances = np.einsum("nk,nki,nkj->kij", r, d, d) / mass[:, None, None] + np.eye(3) * 1e-6
        self.precisions = np.linalg.inv(covariances)
        self.log_norms = -0.5 * (np.linalg.slogdet(covariances)[1] + 3 * np.log(2 * np.pi))

    def component_log_densities(self, z: np.ndarray) -> np.ndarray:
        """N x K: log(weight_k * N(z | mean_k, cov_k))."""
        d = z[:, None, :] - self.means[None]
        mahalanobis = np.einsum("nki,kij,nkj->nk", d, self.precisions, d)
        return self.log_weights + self.log_norms - 0.5 * mahalanobis

    def refit(self, samples: np.ndarray, steps: int = 3) -> "ColourModel":
        from scipy.special import softmax

        for _ in range(steps):
            self._m_step(samples, softmax(self.component_log_densities(samples), axis=1))
        return self

    def cost(self, z: np.ndarray) -> np.ndarray:
        """-log p(z): the data term of a pixel taking this model's label."""
        from scipy.special import logsumexp

        return -logsumexp(self.component_log_densities(z), axis=1)


def _min_cut(source_caps: np.ndarray, sink_caps: np.ndarray, a: np.ndarray, b: np.ndarray,
             weights: np.ndarray) -> np.ndarray:
    """True for pixels on the source (foreground) side of a minimum cut."""
    from scipy.sparse import csr_array
    from scipy.sparse.csgraph import breadth_first_order, maximum_flow

    n = len(source_caps)
    s, t = n, n + 1
    pixels = np.arange(n)
    rows = np.concatenate([np.full(n, s), pixels, a, b])
    cols = np.concatenate([pixels, np.full(n, t), b, a])
    caps = np.concatenate([source_caps, sink_caps, weights, weights]).astype(np.int32)
    keep = caps > 0
    graph = csr_array((caps[keep], (rows[keep], cols[keep])), shape=(n + 2, n + 2))
    graph.sum_duplicates()
    flow = maximum_flow(graph, s, t).flow
    residual = (graph - flow).tocsr()
    residual.data[residual.data < 0] = 0
    residual.eliminate_zeros()
    reached = breadth_first_order(residual, s, directed=True, return_predecessors=False)
    side = np.zeros(n + 2, bool)
    side[reached] = True
    return side[:n]


def grabcut(image: Image.Image, *, border: float = 0.04, work_size: int = 128, components: int = 5,
            iterations: int = 4, gamma: float = 50.0, seed: int = 0) -> np.ndarray:
    """Foreground probability (float32 H x W in [0, 1], H x W of ``image``) of an RGB photo.

    When the cut with all four border strips as background finds nothing (a subject cut off by the bottom
    edge, as in most portraits: its colours then teach the background model), it is run once more with
    the bottom strip unknown."""
    mask = _grabcut(image, ("top", "bottom", "left", "right"), border, work_size, components, iterations, gamma, seed)
    if (mask > 0.5).mean() < 0.01:
        mask = _grabcut(image, ("top", "left", "right"), border, work_size, components, iterations, gamma, seed)
    return mask


def _grabcut(image, sides, border, work_size, components, iterations, gamma, seed) -> np.ndarray:
    rgb = image.convert("RGB")
    scale = min(1.0, work_size / max(rgb.size))
    small = rgb.resize((max(8, round(rgb.width * scale)), max(8, round(rgb.height * scale))), Image.Resampling.BILINEAR)
    z = np.asarray(small, dtype=np.float64).reshape(-1, 3)
    height, width = small.height, small.width
    margin_y, margin_x = max(1, round(border * height)), max(1, round(border * width))
    unknown = np.zeros((height, width), bool)
    unknown[margin_y if "top" in sides else 0:height - margin_y if "bottom" in sides else height,
            margin_x if "left" in sides else 0:width - margin_x if "right" in sides else width] = True
    unknown = unknown.ravel()
    a, b, dist = _neighbour_pairs(height, width)
    diff2 = ((z[a] - z[b]) ** 2).sum(axis=1)
    beta = 1.0 / (2.0 * max(diff2.mean(), 1e-6))
    smooth = np.rint(CAPACITY_SCALE * gamma * np.exp(-beta * diff2) / dist)
    foreground = unknown.copy()
    colours = z / 255.0
    models = None
    for _ in range(iterations):
        if foreground.sum() < 20 or (~foreground).sum() < 20:
            break
        if models is None:
            models = (ColourModel(colours[foreground], components, seed),
                      ColourModel(colours[~foreground], components, seed))
        else:
            models = models[0].refit(colours[foreground]), models[1].refit(colours[~foreground])
        cost_fg = models[0].cost(colours)  # paying for "foreground" at this colour
        cost_bg = models[1].cost(colours)
        low = np.minimum(cost_fg, cost_bg)  # a constant per pixel does not move the cut
        source_caps = np.rint(CAPACITY_SCALE * (cost_bg - low))  # cut when the pixel goes to the background
        sink_caps = np.rint(CAPACITY_SCALE * (cost_fg - low))
        source_caps[~unknown], sink_caps[~unknown] = 0, HARD
        new = _min_cut(source_caps, sink_caps, a, b, smooth) & unknown
        if np.array_equal(new, foreground):
            break
        foreground = new
    mask = Image.fromarray(foreground.reshape(height, width).astype(np.float32), mode="F")
    return np.clip(np.asarray(mask.resize(rgb.size, Image.Resampling.BILINEAR), dtype=np.float32), 0.0, 1.0)
