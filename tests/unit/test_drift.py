"""The kernel MMD two-sample test of handlers/drift.py: against a slow obvious NumPy
reference and TorchDrift's kernel_mmd, and its p-values on synthetic samples."""

import itertools

import numpy as np
import pytest
import torch
from PIL import Image

from handlers.drift import median_bandwidth, mmd_test, pairwise_distances
from scripts.building.compile import compile_model
from scripts.families.weights import resolve_classifier_weights
from scripts.monitor import drift as report
from scripts.samples.photos import photo_crops, write_images
from scripts.zoo import get_model


def reference_mmd(x: np.ndarray, y: np.ndarray, bandwidth: float) -> float:
    """Unbiased MMD^2, written out term by term (Gretton et al. 2012, eq. 3)."""

    def k(a, b):
        return np.exp(-np.sum((a - b) ** 2) / (2 * bandwidth**2))

    n, m = len(x), len(y)
    xx = sum(k(x[i], x[j]) for i, j in itertools.permutations(range(n), 2)) / (n * (n - 1))
    yy = sum(k(y[i], y[j]) for i, j in itertools.permutations(range(m), 2)) / (m * (m - 1))
    xy = sum(k(x[i], y[j]) for i in range(n) for j in range(m)) / (n * m)
    return xx + yy - 2 * xy


def samples(seed: int, shift: float = 0.0, n: int = 40, m: int = 30, dims: int = 8):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(n, dims, generator=generator), torch.randn(m, dims, generator=generator) + shift


@pytest.mark.parametrize("seed, shift", [(0, 0.0), (1, 0.3), (2, 1.0)])
def test_the_score_is_the_unbiased_mmd_with_the_median_bandwidth(seed, shift):
    x, y = samples(seed, shift, n=12, m=9)
    result = mmd_test(x, y, permutations=0)
    pooled = np.concatenate([x.numpy(), y.numpy()]).astype(np.float64)
    distances = [np.linalg.norm(a - b) for a, b in itertools.combinations(pooled, 2)]
    assert result.bandwidth == pytest.approx(float(np.median(distances)), rel=1e-9)
    assert result.score == pytest.approx(
        reference_mmd(x.double().numpy(), y.double().numpy(), result.bandwidth), abs=1e-9
    )


def test_the_score_matches_torchdrift():
    """TorchDrift's kernel_mmd keeps the kernel's diagonal (k(x, x) = 1) in its within-sample
    sums: with the same bandwidth it is ours + 1/(n-1) + 1/(m-1). p-values are unaffected
    (the offset is the same under every relabelling)."""
    mmd = pytest.importorskip("torchdrift.detectors.mmd")
    for seed, shift in [(0, 0.0), (3, 0.5)]:
        x, y = samples(seed, shift)
        ours = mmd_test(x, y, permutations=0)
        theirs = mmd.kernel_mmd(x.double(), y.double(), n_perm=None, kernel=mmd.GaussianKernel(ours.bandwidth))
        assert ours.score == pytest.approx(theirs.item() - 1 / (len(x) - 1) - 1 / (len(y) - 1), abs=1e-4)


def test_without_drift_p_values_are_spread_out():
    p_values = np.array([mmd_test(*samples(seed), permutations=100, seed=seed).p_value for seed in range(40)])
    assert 0.3 < p_values.mean() < 0.7
    assert (p_values < 0.05).mean() <= 0.15  # about 5 % false alarms


def test_a_shifted_sample_gives_a_small_p_value():
    for seed in range(10):
        result = mmd_test(*samples(seed, shift=0.6), permutations=200, seed=seed)
        assert result.p_value < 0.01 and result.score > 0
        assert result.p_value == 1 / 201  # beyond every relabelling


def test_reproducible_and_shaped():
    x, y = samples(5, 0.2)
    first, second = mmd_test(x, y, permutations=50, seed=7), mmd_test(x, y, permutations=50, seed=7)
    assert first.p_value == second.p_value and first.null.shape == (50,)


@pytest.mark.parametrize(
    "x, y",
    [(torch.zeros(5, 3), torch.zeros(5, 4)), (torch.zeros(1, 3), torch.zeros(5, 3)), (torch.zeros(5), torch.zeros(5))],
)
def test_bad_samples_are_refused(x, y):
    with pytest.raises(ValueError):
        mmd_test(x, y)


def test_identical_rows_do_not_divide_by_zero():
    assert median_bandwidth(pairwise_distances(torch.ones(6, 2))) == 1.0
    assert mmd_test(torch.ones(4, 2), torch.ones(3, 2), permutations=10).score == pytest.approx(0.0)


def test_offline_report_flags_distorted_photos_and_not_fresh_crops(tmp_path, capsys):
    """The report embeds with the compiled model through its handler, as the workers do."""
    spec = get_model("mobilenet_v2")
    weights = resolve_classifier_weights(spec, download=False)
    if weights.is_random:
        pytest.skip("the offline MobileNetV2 weights are not installed")
    artifact = tmp_path / spec.artifact
    compile_model(spec, weights, artifact)
    for name, seed, distort in (("reference", 0, False), ("same", 1, False), ("distorted", 1, True)):
        write_images(tmp_path / name, photo_crops(18, seed, distort=distort))
    args = report.get_args_parser().parse_args
    common = ["--artifact", str(artifact), "--plot"]
    report.main(args([str(tmp_path / "reference"), str(tmp_path / "same"), *common, str(tmp_path / "same.png")]))
    same = capsys.readouterr().out
    report.main(args([str(tmp_path / "reference"), str(tmp_path / "distorted"), *common, str(tmp_path / "d.png")]))
    distorted = capsys.readouterr().out

    def p_value(out: str) -> float:
        return float(out.split("p = ")[1].split()[0])

    assert p_value(same) > 0.05 and p_value(distorted) < 0.01, (same, distorted)
    assert "MobileNet_V2_Weights.IMAGENET1K_V1" in same  # real features, offline
    assert Image.open(tmp_path / "d.png").size[0] > 500


def test_offline_report_says_what_is_missing(tmp_path):
    args = report.get_args_parser().parse_args([str(tmp_path), str(tmp_path), "--artifact", str(tmp_path / "no.pt")])
    with pytest.raises(SystemExit, match="no.pt is missing"):
        report.main(args)
