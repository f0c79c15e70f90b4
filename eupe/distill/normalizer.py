"""Teacher-feature normalisers, estimated over the first iterations and then frozen.

- ``standardize`` (EUPE, spec section 2): per-coordinate mean and std over every feature vector seen in the
  first ``warmup_iters`` updates (500 in the paper), then frozen: y = (x - mean) / std.
- ``phi_s`` (RADIO's PHI-S): y = alpha * R U^T (x - mean), with U the covariance eigenvectors, R a normalised
  Hadamard matrix (dims a power of two; otherwise Givens rotations that give the same equal-variance property)
  and alpha = 1 / sqrt(mean eigenvalue), so every output coordinate has unit variance. The rotation is
  estimated when the statistics freeze; before that PHI-S standardises per coordinate like EUPE.
- ``none``: identity.

Statistics live in buffers, so they are saved in Lightning checkpoints and exported with the student.
Std is the population std (divide by the count). Under DDP the sums are all-reduced before accumulating.
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist
from torch import nn

# EUPE paper: statistics estimated over 500 iterations, then frozen (spec section 2).
EUPE_NORMALIZER_WARMUP_ITERS = 500
NORMALIZER_MODES = ("standardize", "phi_s", "none")


def hadamard(n: int) -> torch.Tensor:
    """Sylvester Hadamard matrix of size n (a power of two), normalised to be orthogonal, float64."""
    if n < 1 or n & (n - 1):
        raise ValueError(f"Sylvester Hadamard needs a power-of-two size, got {n}")
    h = torch.ones(1, 1, dtype=torch.float64)
    while h.shape[0] < n:
        h = torch.cat([torch.cat([h, h], 1), torch.cat([h, -h], 1)], 0)
    return h / math.sqrt(n)


def equal_diagonal_rotation(eigvals: torch.Tensor) -> torch.Tensor:
    """Orthogonal R with diag(R diag(eigvals) R^T) all equal to mean(eigvals) (Schur-Horn via Givens).

    Used by PHI-S when the dimension is not a power of two. Each rotation pairs the largest and smallest
    free variances and sets the larger one exactly to the mean; fixed coordinates are never touched again.
    """
    lam = eigvals.to(torch.float64).cpu()
    n = lam.numel()
    target = float(lam.mean())
    cov = torch.diag(lam)
    rot = torch.eye(n, dtype=torch.float64)
    free = torch.ones(n, dtype=torch.bool)
    for _ in range(n - 1):
        diag = cov.diagonal()
        hi = int(torch.where(free, diag, torch.full_like(diag, -math.inf)).argmax())
        lo = int(torch.where(free, diag, torch.full_like(diag, math.inf)).argmin())
        if float(diag[hi] - diag[lo]) <= 1e-12 * max(1.0, abs(target)):
            break
        a, d, b = float(cov[hi, hi]), float(cov[lo, lo]), float(cov[hi, lo])
        # f(theta) = variance of the rotated coordinate hi; f(0) = a >= target >= d = f(pi/2): bisection.
        t0, t1 = 0.0, math.pi / 2
        for _ in range(60):
            mid = 0.5 * (t0 + t1)
            c, s = math.cos(mid), math.sin(mid)
            if c * c * a + 2 * c * s * b + s * s * d - target > 0:
                t0 = mid
            else:
                t1 = mid
        c, s = math.cos(0.5 * (t0 + t1)), math.sin(0.5 * (t0 + t1))
        for m in (cov, rot):  # rows: G @ m
            r_hi, r_lo = m[hi].clone(), m[lo].clone()
            m[hi], m[lo] = c * r_hi + s * r_lo, -s * r_hi + c * r_lo
        c_hi, c_lo = cov[:, hi].clone(), cov[:, lo].clone()  # columns: (G @ cov) @ G^T
        cov[:, hi], cov[:, lo] = c * c_hi + s * c_lo, -s * c_hi + c * c_lo
        free[hi] = False
    return rot


class FeatureNormalizer(nn.Module):
    """Per-coordinate feature normaliser over the last dimension of size ``dim``.

    Call ``observe(x)`` once per training iteration (it accumulates until ``warmup_iters`` iterations have been
    seen, then freezes), and ``forward(x)`` to normalise. Until frozen, ``forward`` uses the running estimate.
    """

    def __init__(self, dim: int, *, mode: str = "standardize", warmup_iters: int = EUPE_NORMALIZER_WARMUP_ITERS,
                 eps: float = 1e-6) -> None:
        super().__init__()
        if mode not in NORMALIZER_MODES:
            raise ValueError(f"normaliser mode {mode!r} unknown; choose one of {NORMALIZER_MODES}")
        self.dim, self.mode, self.warmup_iters, self.eps = dim, mode, int(warmup_iters), eps
        self.register_buffer("iters", torch.zeros((), dtype=torch.long))
        self.register_buffer("frozen", torch.zeros((), dtype=torch.bool))
        self.register_buffer("count", torch.zeros((), dtype=torch.float64))
        self.register_buffer("sum", torch.zeros(dim, dtype=torch.float64))
        second = (dim, dim) if mode == "phi_s" else (dim,)
        self.register_buffer("sum_sq", torch.zeros(second, dtype=torch.float64))
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("std", torch.ones(dim))
        # PHI-S transform (identity until estimated); y = (x - mean) @ transform.T
        self.register_buffer("transform", torch.eye(dim) if mode == "phi_s" else torch.zeros(0))

    @torch.no_grad()
    def observe(self, x: torch.Tensor, *, end_iteration: bool = True) -> None:
        """Accumulate statistics of features ``x [..., dim]`` unless frozen; freeze after ``warmup_iters``
        iterations. ``end_iteration=False`` for all but the last micro-batch of a gradient-accumulation step,
        so the warm-up counts optimizer iterations (EUPE's 500), not micro-batches."""
        if self.mode == "none" or bool(self.frozen):
            return
        flat = x.detach().reshape(-1, self.dim).to(torch.float64)
        count = torch.tensor(float(flat.shape[0]), dtype=torch.float64, device=flat.device)
        s = flat.sum(0)
        sq = flat.T @ flat if self.mode == "phi_s" else (flat * flat).sum(0)
        if dist.is_available() and dist.is_initialized():
            for t in (count, s, sq):
                dist.all_reduce(t)
        self.count += count.to(self.count.device)
        self.sum += s.to(self.sum.device)
        self.sum_sq += sq.to(self.sum_sq.device)
        self._refresh()
        if not end_iteration:
            return
        self.iters += 1
        if int(self.iters) >= self.warmup_iters:
            if self.mode == "phi_s":
                self._estimate_phi_s()
            self.frozen.fill_(True)

    def _covariance(self) -> tuple[torch.Tensor, torch.Tensor]:
        n = self.count.clamp_min(1.0)
        mean = self.sum / n
        if self.mode == "phi_s":
            cov = self.sum_sq / n - torch.outer(mean, mean)
            return mean, 0.5 * (cov + cov.T)
        return mean, self.sum_sq / n - mean * mean

    def _refresh(self) -> None:
        mean, second = self._covariance()
        var = torch.diagonal(second) if second.ndim == 2 else second
        self.mean.copy_(mean.to(self.mean.dtype))
        self.std.copy_(torch.sqrt(var.clamp_min(0.0)).to(self.std.dtype))

    def _estimate_phi_s(self) -> None:
        _, cov = self._covariance()
        eigvals, eigvecs = torch.linalg.eigh(cov.cpu())
        eigvals = eigvals.clamp_min(0.0)
        is_pow2 = (self.dim & (self.dim - 1)) == 0
        rot = hadamard(self.dim) if is_pow2 else equal_diagonal_rotation(eigvals)
        alpha = 1.0 / torch.sqrt(eigvals.mean().clamp_min(self.eps))
        self.transform.copy_((alpha * rot @ eigvecs.T).to(self.transform))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalise ``x [..., dim]`` (fp32 out)."""
        if self.mode == "none":
            return x.float()
        x = x.float() - self.mean
        if self.mode == "phi_s" and bool(self.frozen):
            return x @ self.transform.T
        return x / (self.std + self.eps)

    def stats(self) -> dict[str, torch.Tensor]:
        """Frozen statistics to export: mean, std (and PHI-S transform)."""
        out = {"mean": self.mean.detach().clone(), "std": self.std.detach().clone()}
        if self.mode == "phi_s":
            out["transform"] = self.transform.detach().clone()
        return out
