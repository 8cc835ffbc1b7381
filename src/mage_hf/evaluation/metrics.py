"""Sample-quality metrics on feature vectors: Fréchet distance (FID), kernel distance (KID), improved precision and
recall, and the Inception Score. Inputs are plain arrays, so the same code serves Inception features, a small
judge's features, or any other embedding.

All statistics are computed in float64 (as pytorch-fid and the TF reference do): float32 covariances lose digits
that the matrix square root needs.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass
class FeatureStatistics:
    """Mean `mu` (D,) and covariance `sigma` (D, D) of a feature set of `num_samples` rows (float64)."""

    mu: np.ndarray
    sigma: np.ndarray
    num_samples: int

    @classmethod
    def from_features(cls, features: np.ndarray | torch.Tensor) -> FeatureStatistics:
        """Statistics of (N, D) features; N >= 2."""
        features = _as_matrix(features, "features")
        if len(features) < 2:
            raise ValueError(f"`features` needs at least 2 rows for a covariance, got {len(features)}")
        return cls(features.mean(axis=0), np.cov(features, rowvar=False), len(features))

    def save(self, path) -> None:
        """Write an `.npz` with `mu`, `sigma` and `num_samples` (the layout of pytorch-fid's reference files)."""
        np.savez(path, mu=self.mu, sigma=self.sigma, num_samples=self.num_samples)

    @classmethod
    def load(cls, path) -> FeatureStatistics:
        """Read an `.npz` holding `mu` (D,) and `sigma` (D, D), e.g. pytorch-fid / guided-diffusion references."""
        with np.load(path) as data:
            missing = {"mu", "sigma"} - set(data.files)
            if missing:
                raise ValueError(f"statistics file {path} lacks {sorted(missing)} (has {sorted(data.files)})")
            mu, sigma = data["mu"].astype(np.float64), data["sigma"].astype(np.float64)
            num_samples = int(data["num_samples"]) if "num_samples" in data.files else 0
        if mu.ndim != 1 or sigma.shape != (len(mu), len(mu)):
            raise ValueError(f"statistics file {path}: `mu` {mu.shape} and `sigma` {sigma.shape} do not match")
        return cls(mu, sigma, num_samples)


def frechet_distance(a: FeatureStatistics, b: FeatureStatistics) -> float:
    """||mu_a - mu_b||^2 + Tr(S_a + S_b - 2 (S_a S_b)^(1/2)): FID when the features are Inception pool3 features.

    Tr((S_a S_b)^(1/2)) is computed as the sum of the square roots of the eigenvalues of the symmetric
    S_a^(1/2) S_b S_a^(1/2) (same eigenvalues as S_a S_b): two symmetric eigendecompositions (`eigh`, `eigvalsh`)
    instead of scipy's general `sqrtm` (pytorch-fid's), exact for positive semi-definite covariances, also singular
    ones (fewer samples than dimensions), and faster (docs/evaluation.md).
    """
    if a.mu.shape != b.mu.shape:
        raise ValueError(f"feature dimensions differ: {a.mu.shape[0]} vs {b.mu.shape[0]}")
    diff = a.mu - b.mu
    values, vectors = np.linalg.eigh(a.sigma)
    sqrt_a = (vectors * np.sqrt(np.clip(values, 0, None))) @ vectors.T
    product = sqrt_a @ b.sigma @ sqrt_a
    trace_covmean = np.sqrt(np.clip(np.linalg.eigvalsh((product + product.T) / 2), 0, None)).sum()
    value = diff @ diff + np.trace(a.sigma) + np.trace(b.sigma) - 2.0 * trace_covmean
    return float(max(value, 0.0))


def kernel_distance(
    real: np.ndarray | torch.Tensor,
    fake: np.ndarray | torch.Tensor,
    num_subsets: int = 100,
    subset_size: int = 1000,
    seed: int = 0,
) -> tuple[float, float]:
    """KID (Binkowski et al. 2018): unbiased MMD^2 with the kernel (x.y / D + 1)^3, averaged over random subsets.

    Returns (mean, std) over `num_subsets`; `subset_size` is capped at the smaller set. Unbiased, so it suits the
    small sample counts where FID is biased upwards.
    """
    real, fake = _as_matrix(real, "real"), _as_matrix(fake, "fake")
    _check_same_dim(real, fake)
    size = min(subset_size, len(real), len(fake))
    if size < 2:
        raise ValueError(f"KID needs at least 2 samples in each set, got {len(real)} and {len(fake)}")
    rng = np.random.default_rng(seed)
    dim = real.shape[1]
    values = []
    for _ in range(num_subsets):
        x = real[rng.choice(len(real), size, replace=False)]
        y = fake[rng.choice(len(fake), size, replace=False)]
        k_xx, k_yy, k_xy = ((x @ x.T) / dim + 1) ** 3, ((y @ y.T) / dim + 1) ** 3, ((x @ y.T) / dim + 1) ** 3
        off_diagonal = (k_xx.sum() - np.trace(k_xx) + k_yy.sum() - np.trace(k_yy)) / (size * (size - 1))
        values.append(off_diagonal - 2 * k_xy.mean())
    return float(np.mean(values)), float(np.std(values))


def precision_recall(
    real: np.ndarray | torch.Tensor, fake: np.ndarray | torch.Tensor, k: int = 3, chunk_size: int = 1024
) -> tuple[float, float]:
    """Improved precision and recall (Kynkäänniemi et al. 2019) with k-nearest-neighbour manifolds.

    Precision: the fraction of `fake` rows inside the real manifold (the union of balls around every real row with
    the radius of its k-th nearest real neighbour); recall: the fraction of real rows inside the fake manifold.
    real: (N, D), fake: (M, D); both need more than `k` rows.
    """
    real_t = torch.as_tensor(_as_matrix(real, "real"))
    fake_t = torch.as_tensor(_as_matrix(fake, "fake"))
    _check_same_dim(real_t, fake_t)
    if k < 1:
        raise ValueError(f"`k` must be >= 1, got {k}")
    if min(len(real_t), len(fake_t)) <= k:
        raise ValueError(f"precision/recall with k={k} needs more than {k} samples per set, "
                         f"got {len(real_t)} real and {len(fake_t)} fake")
    real_radii, fake_radii = _kth_neighbour_radii(real_t, k, chunk_size), _kth_neighbour_radii(fake_t, k, chunk_size)
    precision = _fraction_in_manifold(fake_t, real_t, real_radii, chunk_size)
    recall = _fraction_in_manifold(real_t, fake_t, fake_radii, chunk_size)
    return precision, recall


def inception_score(probabilities: np.ndarray | torch.Tensor, splits: int = 10) -> tuple[float, float]:
    """exp(E_x KL(p(y|x) || p(y))) over `splits` equal parts of (N, C) class probabilities: (mean, std).

    The maximum is C (confident and evenly spread predictions), the minimum 1 (identical predictions).
    """
    probs = _as_matrix(probabilities, "probabilities")
    if (probs < 0).any() or not np.allclose(probs.sum(axis=1), 1.0, atol=1e-4):
        raise ValueError("`probabilities` must be non-negative rows summing to 1 (apply softmax to logits)")
    if not 1 <= splits <= len(probs):
        raise ValueError(f"`splits` must be in [1, {len(probs)}] (the number of samples), got {splits}")
    scores = []
    for part in np.array_split(probs, splits):
        marginal = part.mean(axis=0, keepdims=True)
        kl = np.where(part > 0, part * (np.log(np.clip(part, 1e-30, None)) - np.log(np.clip(marginal, 1e-30, None))), 0)
        scores.append(np.exp(kl.sum(axis=1).mean()))
    return float(np.mean(scores)), float(np.std(scores))


def _as_matrix(values: np.ndarray | torch.Tensor, name: str) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu().numpy()
    values = np.asarray(values, dtype=np.float64)
    if values.ndim != 2 or len(values) == 0:
        raise ValueError(f"`{name}` must be a non-empty (N, D) array, got shape {values.shape}")
    if not np.isfinite(values).all():
        raise ValueError(f"`{name}` contains NaN or infinite values")
    return values


def _check_same_dim(a, b) -> None:
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"feature dimensions differ: {a.shape[1]} vs {b.shape[1]}")


def _kth_neighbour_radii(points: torch.Tensor, k: int, chunk_size: int) -> torch.Tensor:
    """(N,) distance from each row to its k-th nearest other row."""
    radii = []
    for start in range(0, len(points), chunk_size):
        distances = torch.cdist(points[start : start + chunk_size], points)
        # the smallest distance is the point itself (0), so the k-th neighbour is at sorted position k
        radii.append(distances.kthvalue(k + 1, dim=1).values)
    return torch.cat(radii)


def _fraction_in_manifold(queries: torch.Tensor, support: torch.Tensor, radii: torch.Tensor, chunk_size: int) -> float:
    inside = 0
    for start in range(0, len(queries), chunk_size):
        distances = torch.cdist(queries[start : start + chunk_size], support)
        inside += int((distances <= radii[None, :]).any(dim=1).sum())
    return inside / len(queries)


__all__ = ["FeatureStatistics", "frechet_distance", "inception_score", "kernel_distance", "precision_recall"]
