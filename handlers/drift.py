"""Input drift: the kernel MMD two-sample test (Gretton et al., "A kernel two-sample
test", JMLR 13, 2012) between a reference sample of feature vectors and a recent one.
Pure functions on CPU tensors, no TorchServe.

Kernel: Gaussian, k(x, y) = exp(-|x - y|^2 / (2 l^2)), with the bandwidth l the median
of the pooled sample's pairwise distances (the median heuristic). Statistic: the
unbiased estimate of MMD^2 (the kernel's diagonal left out). p-value: the fraction of
random relabellings of the pooled sample whose statistic is at least the observed one,
(1 + count) / (1 + permutations), so never exactly 0.

Also what a worker's live test (observers.DriftMonitor) is set with and reports, and the
archive's reference sample it compares against.
"""

from dataclasses import dataclass
from pathlib import Path

import torch


@dataclass(frozen=True)
class DriftResult:
    score: float  # unbiased MMD^2 between reference and current; about 0 without drift
    p_value: float  # permutation p-value: small when the two samples differ
    bandwidth: float  # the Gaussian kernel's l (median heuristic)
    null: torch.Tensor  # [permutations] the statistic under relabelling (for plots)


def pairwise_distances(pooled: torch.Tensor) -> torch.Tensor:
    """Tensor[N, D] -> the Euclidean distances between its rows, Tensor[N, N]."""
    return torch.cdist(pooled, pooled, compute_mode="use_mm_for_euclid_dist")  # one matrix product


def median_bandwidth(distances: torch.Tensor) -> float:
    """The median of the distances (Tensor[N, N]) between distinct rows."""
    upper = distances[torch.triu_indices(len(distances), len(distances), offset=1).unbind()]
    bandwidth = upper.quantile(0.5).item()  # midway between the middle two, as numpy.median
    return bandwidth if bandwidth > 0 else 1.0  # all rows equal: any bandwidth gives MMD 0


def gaussian_kernel(distances: torch.Tensor, bandwidth: float) -> torch.Tensor:
    """K (Tensor[N, N]) = exp(-d_ij^2 / (2 bandwidth^2)) from the pairwise distances."""
    return torch.exp(-distances.square() / (2 * bandwidth**2))


def mmd_statistics(kernel: torch.Tensor, in_first: torch.Tensor) -> torch.Tensor:
    """Unbiased MMD^2 for each labelling: kernel (Tensor[N, N]) of the pooled sample,
    in_first (BoolTensor[P, N]) marks which rows belong to the first sample in each of P
    labellings -> Tensor[P]."""
    off_diagonal = kernel - torch.diag_embed(kernel.diagonal())
    first = in_first.to(kernel.dtype)  # [P, N]
    second = 1 - first
    n, m = first[0].sum(), second[0].sum()
    within_first = ((first @ off_diagonal) * first).sum(dim=1) / (n * (n - 1))
    within_second = ((second @ off_diagonal) * second).sum(dim=1) / (m * (m - 1))
    between = ((first @ kernel) * second).sum(dim=1) / (n * m)
    return within_first + within_second - 2 * between


def mmd_test(reference: torch.Tensor, current: torch.Tensor, permutations: int = 200, seed: int = 0) -> DriftResult:
    """reference (Tensor[n, D]) vs current (Tensor[m, D]), n and m >= 2 -> the kernel MMD
    test's score and permutation p-value. `seed` makes the p-value reproducible."""
    if reference.ndim != 2 or current.ndim != 2 or reference.shape[1] != current.shape[1]:
        raise ValueError(f"two samples of equal feature size expected, got {tuple(reference.shape)} and "
                         f"{tuple(current.shape)}")  # fmt: skip
    n, m = len(reference), len(current)
    if n < 2 or m < 2:
        raise ValueError(f"each sample needs at least 2 rows, got {n} and {m}")
    distances = pairwise_distances(torch.cat([reference, current]).double())
    bandwidth = median_bandwidth(distances)
    kernel = gaussian_kernel(distances, bandwidth)
    observed = torch.zeros(1, n + m, dtype=torch.bool)
    observed[0, :n] = True
    score = mmd_statistics(kernel, observed)[0]
    null = torch.zeros(0, dtype=kernel.dtype)
    if permutations:
        generator = torch.Generator().manual_seed(seed)
        shuffled = torch.stack([torch.randperm(n + m, generator=generator) < n for _ in range(permutations)])
        null = mmd_statistics(kernel, shuffled)
    p_value = (1 + (null >= score).sum().item()) / (1 + permutations)
    return DriftResult(score.item(), p_value, bandwidth, null.float())


REFERENCE_FILE = "drift_reference.pt"  # in the model directory, written by scripts/building/drift_reference.py


@dataclass(frozen=True)
class DriftSettings:
    window: int = 100  # the most recent images compared with the reference
    every: int = 100  # images between two tests
    permutations: int = 200  # relabellings for the p-value (its resolution is 1 / (1 + permutations))
    threshold: float = 0.01  # p-values below it are drift: a warning in the log
    reference_size: int = 100  # images taken as the reference when the archive holds none

    def __post_init__(self):
        for name, low in (("window", 2), ("every", 1), ("permutations", 0), ("reference_size", 2)):
            if not low <= getattr(self, name) <= 100_000:
                raise ValueError(f"drift_{name} must be between {low} and 100000, got {getattr(self, name)}")
        if not 0 < self.threshold < 1:
            raise ValueError(f"drift_threshold must be between 0 and 1, got {self.threshold}")


@dataclass(frozen=True)
class DriftReport:
    """One test's result, with what it compared."""

    result: DriftResult
    window: int  # images in the window
    reference: int  # images in the reference
    drifted: bool  # p-value below the threshold


def load_reference(path: Path, feature_size: int, weights_sha256: str | None) -> torch.Tensor:
    """The archive's reference features (Tensor[N, feature_size]); refused when they come
    from other weights or another feature size: compared with this model's features they
    would report drift that is not there."""
    stored = torch.load(path, map_location="cpu", weights_only=True)
    features = stored["features"]
    if features.ndim != 2 or features.shape[1] != feature_size or len(features) < 2:
        raise ValueError(f"{path.name}: features of shape {tuple(features.shape)}, expected [N >= 2, {feature_size}]")
    if stored.get("weights_sha256") != weights_sha256:
        raise ValueError(f"{path.name} was computed with other weights than this model's: rebuild the archive")
    return features.float()
