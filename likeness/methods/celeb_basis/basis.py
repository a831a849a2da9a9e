"""The celeb basis: where well-known names live in a text encoder's token-embedding space.

Celeb Basis (arXiv 2306.00926) writes a new person as two token embeddings, each the mean of the
celebrities' first (or second) name tokens plus a weighted sum of the main directions in which
those tokens differ. This module builds that basis from a base model's token-embedding table(s):

1. :func:`split_names` keeps the names that every tokenizer splits into exactly two known tokens
   (the paper's filter) and reports the others;
2. per BPE token position (first name, last name), the unique token rows are centred and PCA'd
   (SVD); the basis keeps the mean and the first ``k`` directions (orthonormal), clipped to the
   rank the names support;
3. for SDXL the two encoders' rows are concatenated before the PCA, so one direction moves both
   encoders coherently and a person is still exactly ``2 x k`` numbers.

``radius`` is the RMS distance of the names from their mean. Coefficients are L2-normalised by the
face encoder, and ``mean + radius * (c @ directions)`` then puts every new person at the distance
from the mean where real names sit, instead of at an arbitrary unit distance.

A basis remembers a hash of each embedding table it came from, so using it with another base model
fails loudly (:class:`BasisMismatchError`) instead of producing garbage embeddings.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import torch
from safetensors.torch import load_file, save_file

log = logging.getLogger(__name__)

NAMES_FILE = Path(__file__).with_name("data") / "celebrity_names.txt"
DEFAULT_RANK = 512
BASIS_VERSION = "2"  # 2: probes of the embedding tables (half-precision pipelines)
# Singular values below this fraction of the largest one are numerical noise, not directions.
RANK_TOLERANCE = 1e-5


class NameListError(ValueError):
    """A name list cannot build a basis (wrong token counts, too few usable names, unreadable file)."""


class BasisMismatchError(ValueError):
    """A basis is used with a base model whose token-embedding table(s) it was not built from."""


def read_names(path: str | Path | None = None) -> list[str]:
    """Names from a text file, one per line; ``#`` comments and blank lines are skipped."""
    path = Path(path) if path is not None else NAMES_FILE
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise NameListError(f"{path}: cannot read name list ({type(exc).__name__}: {exc})") from None
    return [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]


@dataclass
class NameSplit:
    """Names that split into exactly two known tokens (with their ids per tokenizer), and the rest."""

    kept: list[str] = field(default_factory=list)
    ids: list[list[tuple[int, int]]] = field(default_factory=list)  # [tokenizer][name] -> (first, second)
    rejected: dict[str, list[str]] = field(default_factory=dict)  # name -> its tokens (first tokenizer that refused it)

    def report(self) -> str:
        total = len(self.kept) + len(self.rejected)
        return f"{len(self.kept)} of {total} names split into exactly 2 known tokens"


def _name_tokens(tokenizer, name: str) -> list[int]:
    ids = tokenizer(name, add_special_tokens=False)["input_ids"]
    return [i for i in ids if i not in tokenizer.all_special_ids]


def split_names(tokenizers: Sequence, names: Sequence[str], *, strict: bool = False) -> NameSplit:
    """Keep names every tokenizer splits into exactly two known tokens (the paper's filter).

    With ``strict`` (a user's own list) any other entry is an error that names it and shows how it
    was split: silently dropping names the user chose would build a different basis than asked.
    """
    result = NameSplit(ids=[[] for _ in tokenizers])
    for name in dict.fromkeys(names):  # dedupe, keep order
        per_tokenizer = [_name_tokens(tok, name) for tok in tokenizers]
        bad = next((ids for ids in per_tokenizer if len(ids) != 2), None)
        if bad is not None:
            tok = tokenizers[[len(i) for i in per_tokenizer].index(len(bad))]
            result.rejected[name] = tok.convert_ids_to_tokens(bad)
            continue
        result.kept.append(name)
        for slot, ids in zip(result.ids, per_tokenizer):
            slot.append((ids[0], ids[1]))
    if strict and result.rejected:
        shown = "; ".join(f"{n!r} -> {len(t)} token(s) {t}" for n, t in list(result.rejected.items())[:10])
        more = f" (and {len(result.rejected) - 10} more)" if len(result.rejected) > 10 else ""
        raise NameListError(
            f"{len(result.rejected)} name(s) do not split into exactly 2 known tokens with this base model's "
            f"tokenizer: {shown}{more}. Celeb Basis needs first-name + last-name pairs of whole tokens; "
            f"remove these entries or use the built-in list"
        )
    if len(result.kept) < 3:
        raise NameListError(
            f"only {len(result.kept)} name(s) split into exactly 2 known tokens with this tokenizer; a basis "
            f"needs at least 3 ({result.report()})"
        )
    return result


def table_hash(text_encoder) -> str:
    """A short hash of a text encoder's token-embedding table: identifies the base model a basis fits."""
    weight = text_encoder.get_input_embeddings().weight.detach().to("cpu", torch.float32).contiguous()
    digest = hashlib.sha256(str(tuple(weight.shape)).encode())
    digest.update(weight.numpy().tobytes())
    return digest.hexdigest()[:16]


_PROBE_SEED = 20


def _probe_vector(dim: int) -> torch.Tensor:
    return torch.randn(dim, generator=torch.Generator().manual_seed(_PROBE_SEED), dtype=torch.float64)


def table_probe(text_encoder) -> torch.Tensor:
    """One number per token row: the row's product with a fixed random vector. Unlike :func:`table_hash` it can
    be compared within the rounding of a half-precision copy of the table (see :func:`probe_matches`)."""
    weight = text_encoder.get_input_embeddings().weight.detach().to("cpu", torch.float64)
    return (weight @ _probe_vector(weight.shape[1])).float()


def probe_matches(text_encoder, probe: torch.Tensor) -> bool:
    """Whether ``text_encoder``'s table (in any dtype) is the table ``probe`` was taken from, rounded to that
    dtype: each row's product may differ by at most the dtype's rounding of every element (eps/2 relative, plus
    float16's subnormal spacing), doubled for margin, plus the float32 rounding of the stored probe. A table of
    another model differs by orders of magnitude more."""
    table = text_encoder.get_input_embeddings().weight.detach()
    weight = table.to("cpu", torch.float64)
    if weight.shape[0] != probe.shape[0]:
        return False
    vector = _probe_vector(weight.shape[1])
    eps = torch.finfo(table.dtype).eps if table.dtype.is_floating_point else 0.0
    bound = eps * (weight.abs() @ vector.abs()) + 1e-7 * vector.abs().sum() + 2.0 ** -23 * probe.double().abs()
    return bool(((weight @ vector) - probe.double()).abs().le(bound).all())


@dataclass
class CelebBasis:
    """Mean + ``k`` orthonormal directions for each of the 2 name-token positions."""

    mean: torch.Tensor  # (2, D), D = sum of the encoders' hidden sizes
    directions: torch.Tensor  # (2, k, D), orthonormal rows per position
    radius: torch.Tensor  # (2,), RMS distance of the names' tokens from the mean
    dims: tuple[int, ...]  # hidden size of each text encoder, in pipeline order
    table_hashes: tuple[str, ...]
    names: list[str]
    requested_rank: int = DEFAULT_RANK
    probes: tuple[torch.Tensor, ...] | None = None  # table_probe of each encoder (None: a version-1 basis)

    @property
    def rank(self) -> int:
        return self.directions.shape[1]

    def embed(self, coefficients: torch.Tensor) -> list[torch.Tensor]:
        """Coefficients ``(..., 2, k)`` -> one ``(..., 2, d_i)`` token-embedding tensor per text encoder."""
        if coefficients.shape[-2:] != (2, self.rank):
            raise ValueError(f"coefficients must end in shape (2, {self.rank}), got {tuple(coefficients.shape)}")
        directions = self.directions.to(coefficients)
        offset = torch.einsum("...pk,pkd->...pd", coefficients, directions)
        joint = self.mean.to(coefficients) + self.radius.to(coefficients)[:, None] * offset
        return list(joint.split(list(self.dims), dim=-1))

    def project(self, embeddings: torch.Tensor) -> torch.Tensor:
        """Joint token embeddings ``(..., 2, D)`` -> the coefficients that :meth:`embed` maps back."""
        centred = embeddings.to(self.mean) - self.mean
        return torch.einsum("...pd,pkd->...pk", centred, self.directions) / self.radius[:, None]

    def check_compatible(self, text_encoders: Sequence) -> None:
        """Refuse a base model whose embedding table(s) differ from the ones this basis was built on. A float32
        table must match exactly (its hash); a float16 / bfloat16 one (a half-precision pipeline) must be that
        table rounded to its dtype (:func:`probe_matches`)."""
        hashes = tuple(table_hash(enc) for enc in text_encoders)
        if hashes == self.table_hashes:
            return
        dtypes = [enc.get_input_embeddings().weight.dtype for enc in text_encoders]
        half = all(d != torch.float32 for d in dtypes)
        if half and self.probes is not None and len(self.probes) == len(text_encoders) and all(
                probe_matches(enc, probe) for enc, probe in zip(text_encoders, self.probes)):
            return
        if half and self.probes is None:
            raise BasisMismatchError(
                f"this celeb basis (format version 1) can only be checked against a float32 pipeline, but the given "
                f"one is in {', '.join(str(d).replace('torch.', '') for d in dtypes)}; generate with --dtype float32, "
                f"or re-run personalization to write a basis that half-precision pipelines can check")
        raise BasisMismatchError(
            f"this celeb basis was built for a base model with token-embedding table hash(es) "
            f"{list(self.table_hashes)}, but the given model has {list(hashes)}"
            + (" (compared within its half-precision rounding)" if half else "")
            + "; re-run personalization on this base model (the basis is rebuilt automatically)"
        )

    def metadata(self) -> dict[str, str]:
        return {
            "format": "likeness-celeb-basis",
            "version": BASIS_VERSION,
            "dims": json.dumps(list(self.dims)),
            "table_hashes": json.dumps(list(self.table_hashes)),
            "rank": str(self.rank),
            "requested_rank": str(self.requested_rank),
            "names": json.dumps(self.names),
        }

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tensors = {"mean": self.mean, "directions": self.directions, "radius": self.radius}
        tensors.update({f"probe_{e}": probe for e, probe in enumerate(self.probes or ())})
        save_file({k: v.contiguous().float().cpu() for k, v in tensors.items()}, str(tmp), metadata=self.metadata())
        tmp.replace(path)  # atomic: a concurrent reader never sees half a file
        return path

    @classmethod
    def load(cls, path: str | Path) -> "CelebBasis":
        from safetensors import safe_open

        path = Path(path)
        try:
            with safe_open(str(path), framework="pt") as handle:
                meta = handle.metadata() or {}
            tensors = load_file(str(path))
            if meta.get("format") != "likeness-celeb-basis":
                raise KeyError("format")
            return cls(
                mean=tensors["mean"],
                directions=tensors["directions"],
                radius=tensors["radius"],
                dims=tuple(json.loads(meta["dims"])),
                table_hashes=tuple(json.loads(meta["table_hashes"])),
                names=json.loads(meta["names"]),
                requested_rank=int(meta.get("requested_rank", DEFAULT_RANK)),
                probes=tuple(tensors[f"probe_{e}"] for e in range(len(json.loads(meta["dims"]))))
                if "probe_0" in tensors else None,
            )
        except (OSError, KeyError, ValueError, json.JSONDecodeError) as exc:
            raise BasisMismatchError(f"{path}: not a likeness celeb-basis file ({type(exc).__name__}: {exc})") from None


def build_basis(
    text_encoders: Sequence,
    tokenizers: Sequence,
    *,
    rank: int = DEFAULT_RANK,
    names: Sequence[str] | str | Path | None = None,
) -> CelebBasis:
    """PCA of the celebrity names' token embeddings, per token position.

    ``names``: None for the built-in list (filtered, with a report in the log), or the user's own
    list / file (strict: every entry must split into exactly two tokens).
    """
    if len(text_encoders) != len(tokenizers):
        raise ValueError("give one tokenizer per text encoder")
    strict = names is not None
    if names is None or isinstance(names, (str, Path)):
        names = read_names(names)
    split = split_names(tokenizers, names, strict=strict)
    log.info("celeb basis: %s", split.report())
    tables = [enc.get_input_embeddings().weight.detach().to("cpu", torch.float64) for enc in text_encoders]
    means, directions, radii, ranks = [], [], [], []
    for position in (0, 1):
        # Unique token (tuples across tokenizers) at this position: a shared first name counts once.
        keys = list(dict.fromkeys(tuple(ids[i][position] for ids in split.ids) for i in range(len(split.kept))))
        rows = torch.cat([table[[key[e] for key in keys]] for e, table in enumerate(tables)], dim=1)
        mean = rows.mean(0)
        centred = rows - mean
        _, singular, vt = torch.linalg.svd(centred, full_matrices=False)
        ranks.append(int((singular > RANK_TOLERANCE * singular[0]).sum()) if len(singular) else 0)
        means.append(mean)
        directions.append(vt)
        radii.append(centred.pow(2).sum(1).mean().sqrt())
    k = min(rank, *ranks)
    if k < 1:
        raise NameListError(f"the name tokens span no directions ({split.report()})")
    if k < rank:
        log.info("celeb basis: rank clipped from %d to %d (what the names support)", rank, k)
    return CelebBasis(
        mean=torch.stack(means).float(),
        directions=torch.stack([d[:k] for d in directions]).float(),
        radius=torch.stack(radii).float(),
        dims=tuple(int(t.shape[1]) for t in tables),
        table_hashes=tuple(table_hash(enc) for enc in text_encoders),
        names=split.kept,
        requested_rank=rank,
        probes=tuple(table_probe(enc) for enc in text_encoders),
    )


def cached_basis(
    text_encoders: Sequence,
    tokenizers: Sequence,
    *,
    rank: int = DEFAULT_RANK,
    names: Sequence[str] | str | Path | None = None,
    cache_dir: str | Path | None = None,
) -> CelebBasis:
    """:func:`build_basis`, cached on disk per (embedding tables, name list, rank)."""
    if cache_dir is None:
        from likeness.models.tiny import cache_root

        cache_dir = cache_root() / "celeb_basis"
    name_list = read_names(names) if names is None or isinstance(names, (str, Path)) else list(names)
    key = hashlib.sha256(
        json.dumps([[table_hash(e) for e in text_encoders], name_list, rank, names is None, BASIS_VERSION]).encode()
    ).hexdigest()[:20]
    path = Path(cache_dir) / f"basis-{key}.safetensors"
    if path.exists():
        try:
            return CelebBasis.load(path)
        except BasisMismatchError:
            log.warning("ignoring unreadable cached basis %s; rebuilding it", path)
    basis = build_basis(text_encoders, tokenizers, rank=rank, names=None if names is None else name_list)
    basis.save(path)
    return basis
