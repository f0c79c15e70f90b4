"""Compressed teacher features for the teacher-feature cache: fp16, int8 with per-channel scales, top-k PCA.

TinyViT (microsoft/Cream TinyViT/data/augmentation/dataset_wrapper.py) stores its teacher's top-k logits in
fp16 next to each sample's augmentation seed; dense features are far larger than logits, so here they can be
stored as

- ``fp16``: every value rounded to half precision (relative error <= 2**-11);
- ``int8``: symmetric codes -127..127 with one float32 scale per channel, ``scale = max|x| / 127`` over the
  values that share it (summary: the shard's rows; patch: the row's tokens), so ``|x - code * scale| <=
  scale / 2``;
- ``pca: k`` (either dtype): the patch tokens projected on the top-k principal components of the shard's
  tokens (float32 mean and basis stored once per shard); the mean squared reconstruction error per token
  equals the sum of the discarded eigenvalues of the tokens' covariance.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

STORAGE_DTYPES = ("fp16", "int8")
INT8_LEVELS = 127  # symmetric int8 codes: -127..127 (-128 unused, so the grid is symmetric about zero)
FP16_RELATIVE_ERROR = 2.0 ** -11  # round-to-nearest with a 10-bit mantissa (normal numbers)


@dataclass(frozen=True)
class FeatureStorage:
    """How a cache stores teacher features: ``dtype`` fp16 | int8, ``pca`` = k > 0 keeps the top-k principal
    components of the patch tokens (summaries are never projected)."""

    dtype: str = "fp16"
    pca: int = 0

    def __post_init__(self) -> None:
        if self.dtype not in STORAGE_DTYPES:
            raise ValueError(f"cache_storage={self.dtype!r} unknown; use one of {', '.join(STORAGE_DTYPES)}")
        if isinstance(self.pca, bool) or not isinstance(self.pca, int) or self.pca < 0:
            raise ValueError(f"cache_pca={self.pca!r} must be a non-negative integer (0: no PCA)")

    def check_dims(self, patch_dims: dict[str, int]) -> None:
        """ValueError naming the teacher whose patch width is not larger than ``pca``."""
        small = {k: d for k, d in patch_dims.items() if self.pca and self.pca >= d}
        if small:
            raise ValueError(f"cache_pca={self.pca} keeps as many components as teachers {small} have channels; "
                             "choose a smaller cache_pca or 0")


def int8_encode(x: torch.Tensor, reduce_dims: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric int8 codes of ``x`` and float32 scales shared over ``reduce_dims`` (kept as size-1 dims):
    ``scale = max|x| / 127`` (1 where a channel is all zero)."""
    x = x.float()
    amax = x.abs().amax(dim=reduce_dims, keepdim=True)
    scale = torch.where(amax > 0, amax / INT8_LEVELS, torch.ones_like(amax))
    codes = torch.round(x / scale).clamp_(-INT8_LEVELS, INT8_LEVELS).to(torch.int8)
    return codes, scale


def int8_decode(codes: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return codes.float() * scale


@dataclass(frozen=True)
class PCABasis:
    """Top-k principal components of a set of tokens: ``mean [C]``, ``basis [k, C]`` (orthonormal rows, by
    decreasing variance) and every eigenvalue of the tokens' covariance ``variances [C]`` (float64, 1/M)."""

    mean: torch.Tensor
    basis: torch.Tensor
    variances: torch.Tensor

    @property
    def discarded_variance(self) -> float:
        """Mean squared reconstruction error per token on the tokens the basis was fitted to."""
        return float(self.variances[self.basis.shape[0]:].sum())


def fit_pca(tokens: torch.Tensor, k: int) -> PCABasis:
    """PCA of ``tokens [M, C]`` (covariance with 1/M, in float64) keeping ``k`` components."""
    x = tokens.reshape(-1, tokens.shape[-1]).double()
    mean = x.mean(0)
    centred = x - mean
    cov = centred.T @ centred / x.shape[0]
    values, vectors = torch.linalg.eigh(cov)  # ascending
    order = torch.argsort(values, descending=True)
    values, vectors = values[order].clamp_(min=0.0), vectors[:, order]
    return PCABasis(mean=mean.float(), basis=vectors[:, :k].T.contiguous().float(), variances=values)


def pca_encode(tokens: torch.Tensor, pca: PCABasis) -> torch.Tensor:
    """Coefficients ``[..., k]`` of tokens ``[..., C]``."""
    return (tokens.float() - pca.mean) @ pca.basis.T


def pca_decode(coefs: torch.Tensor, mean: torch.Tensor, basis: torch.Tensor) -> torch.Tensor:
    """Tokens ``[..., C]`` back from coefficients ``[..., k]``."""
    return coefs.float() @ basis + mean


def row_bytes(storage: FeatureStorage, *, summary_dim: int, patch_dim: int, tokens: int, shard_rows: int,
              aug_dim: int) -> float:
    """Bytes one cache row takes in a shard of ``shard_rows`` rows (per-shard tensors shared out), for one
    teacher: index + epoch (int64), aug (float32), summary and patch as ``storage`` stores them."""
    row = 8 + 8 + 4 * aug_dim
    if storage.dtype == "fp16":
        row += 2 * summary_dim
    else:  # int8 codes + the shard's per-channel float32 scales
        row += summary_dim + 4 * summary_dim / shard_rows
    width = storage.pca or patch_dim
    if storage.dtype == "fp16":
        row += 2 * tokens * width
    else:  # int8 codes + one float32 scale per channel (or component) and row
        row += tokens * width + 4 * width
    if storage.pca:  # float32 mean + basis per shard
        row += 4 * (patch_dim + storage.pca * patch_dim) / shard_rows
    return row


def stored_error(stored: torch.Tensor, online: torch.Tensor) -> dict[str, float]:
    """Mean cosine over the last dim and relative L2 (``||stored - online|| / ||online||``), in float64."""
    a, b = stored.double(), online.double()
    cos = torch.nn.functional.cosine_similarity(a, b, dim=-1).mean()
    return {"cosine": float(cos), "rel_l2": float((a - b).norm() / b.norm().clamp(min=1e-300))}
