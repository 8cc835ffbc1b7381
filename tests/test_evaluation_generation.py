"""Generation metrics: known values on tiny inputs, the offline Inception, the `evaluate generation` command and its
errors."""

from __future__ import annotations

import json

import numpy as np
import PIL.Image
import pytest
import torch

from mage_hf.commands import main as cli
from mage_hf.sampling import sample_uint8_batches
from mage_hf.evaluation.inception import INCEPTION_FEATURES, InceptionFeatureExtractor, to_inception_input
from mage_hf.evaluation.metrics import (
    FeatureStatistics,
    frechet_distance,
    inception_score,
    kernel_distance,
    precision_recall,
)


def _gaussian(n: int, dim: int, shift: float = 0.0, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, dim)) + shift


# ---------------------------------------------------------------- metrics on known values


def test_frechet_distance_closed_form():
    """Diagonal Gaussians: ||mu_a - mu_b||^2 + sum (sqrt(s_a) - sqrt(s_b))^2."""
    mu_a, mu_b = np.array([0.0, 1.0, 2.0]), np.array([1.0, 1.0, 0.0])
    s_a, s_b = np.array([1.0, 4.0, 9.0]), np.array([4.0, 1.0, 1.0])
    fid = frechet_distance(FeatureStatistics(mu_a, np.diag(s_a), 0), FeatureStatistics(mu_b, np.diag(s_b), 0))
    expected = ((mu_a - mu_b) ** 2).sum() + ((np.sqrt(s_a) - np.sqrt(s_b)) ** 2).sum()
    assert fid == pytest.approx(expected, rel=1e-9)


def test_frechet_distance_identical_zero_and_shift_grows():
    real = _gaussian(500, 8)
    same = FeatureStatistics.from_features(real)
    assert frechet_distance(same, same) == pytest.approx(0.0, abs=1e-8)
    fids = [frechet_distance(same, FeatureStatistics.from_features(_gaussian(500, 8, shift, seed=1)))
            for shift in (0.0, 0.5, 1.0)]
    assert fids[0] < 0.2 < fids[1] < fids[2]
    assert fids[2] == pytest.approx(8.0, rel=0.1)  # shift 1 in 8 dims: ||d||^2 = 8


def test_statistics_round_trip(tmp_path):
    stats = FeatureStatistics.from_features(_gaussian(50, 4))
    stats.save(tmp_path / "ref.npz")
    loaded = FeatureStatistics.load(tmp_path / "ref.npz")
    np.testing.assert_array_equal(loaded.mu, stats.mu)
    np.testing.assert_array_equal(loaded.sigma, stats.sigma)
    assert loaded.num_samples == 50
    np.savez(tmp_path / "bad.npz", mean=stats.mu)
    with pytest.raises(ValueError, match="lacks"):
        FeatureStatistics.load(tmp_path / "bad.npz")


def test_kernel_distance_identical_near_zero_shift_larger():
    real = _gaussian(200, 16)
    same, _ = kernel_distance(real, _gaussian(200, 16, seed=1), num_subsets=20, subset_size=100)
    shifted, _ = kernel_distance(real, _gaussian(200, 16, 1.0, seed=1), num_subsets=20, subset_size=100)
    assert abs(same) < 0.05 < shifted


def test_precision_recall_known_values():
    real = _gaussian(100, 4)
    assert precision_recall(real, real.copy()) == (1.0, 1.0)
    assert precision_recall(real, real + 100.0) == (0.0, 0.0)
    # generated set collapsed onto a few real points: precise but poor recall
    precision, recall = precision_recall(real, np.repeat(real[:2], 10, axis=0))
    assert precision == 1.0 and recall < 0.3


def test_inception_score_known_values():
    assert inception_score(np.eye(10), splits=1) == pytest.approx((10.0, 0.0))
    assert inception_score(np.full((20, 5), 0.2), splits=2) == pytest.approx((1.0, 0.0))
    with pytest.raises(ValueError, match="summing to 1"):
        inception_score(np.ones((4, 3)))
    with pytest.raises(ValueError, match="splits"):
        inception_score(np.eye(3), splits=4)


@pytest.mark.parametrize(
    "call",
    [
        lambda: precision_recall(np.zeros((5, 3)), np.zeros((5, 4))),
        lambda: precision_recall(np.zeros((3, 3)), np.zeros((3, 3)), k=3),
        lambda: kernel_distance(np.zeros((0, 3)), np.zeros((4, 3))),
        lambda: FeatureStatistics.from_features(np.zeros(5)),
        lambda: FeatureStatistics.from_features(np.array([[np.nan, 1.0], [0.0, 1.0]])),
    ],
)
def test_metric_input_errors(call):
    with pytest.raises(ValueError):
        call()


# ---------------------------------------------------------------- the offline Inception


@pytest.fixture(scope="module")
def inception() -> InceptionFeatureExtractor:
    return InceptionFeatureExtractor(batch_size=16)


def _digits(count: int, offset: int = 0) -> torch.Tensor:
    from mage_hf.mnist import load_mnist_arrays

    digits, _ = load_mnist_arrays()
    return torch.from_numpy(digits[offset : offset + count])[:, None].repeat(1, 3, 1, 1)  # uint8 (N, 3, 32, 32)


def test_inception_loads_offline_and_is_deterministic(inception):
    images = _digits(4)
    features = inception(images)
    assert features.shape == (4, INCEPTION_FEATURES) and features.dtype == torch.float64
    torch.testing.assert_close(inception(images[:2]), features[:2])  # batch composition does not matter
    torch.testing.assert_close(inception(images.float() / 255), features)  # uint8 and [0, 1] floats agree


def test_inception_fid_ranks_real_above_noise(inception):
    """Digits vs other digits is far closer than digits vs the same digits under heavy noise."""
    a, b = _digits(12), _digits(12, offset=100)
    noisy = (b.float() + torch.randn(b.shape, generator=torch.Generator().manual_seed(0)) * 80).clamp(0, 255)
    stats = [FeatureStatistics.from_features(inception(x)) for x in (a, b, noisy.to(torch.uint8))]
    assert frechet_distance(stats[0], stats[0]) < 1e-3
    assert frechet_distance(stats[0], stats[1]) < frechet_distance(stats[0], stats[2])


def test_inception_input_errors():
    with pytest.raises(ValueError, match="3 \\(RGB\\) channels"):
        to_inception_input(torch.zeros(2, 1, 8, 8, dtype=torch.uint8))
    with pytest.raises(ValueError, match="\\[0, 1\\]"):
        to_inception_input(torch.full((1, 3, 8, 8), 2.0))
    with pytest.raises(TypeError, match="uint8 or floating"):
        to_inception_input(torch.zeros(1, 3, 8, 8, dtype=torch.int32))
    with pytest.raises(FileNotFoundError, match="inception_weights"):
        InceptionFeatureExtractor("does-not-exist.pt")


# ---------------------------------------------------------------- the command


def _write_pngs(folder, images: torch.Tensor, mode: str = "RGB"):
    folder.mkdir(parents=True, exist_ok=True)
    for index, image in enumerate(images.permute(0, 2, 3, 1).numpy()):
        PIL.Image.fromarray(image).convert(mode).save(folder / f"{index:03d}.png")
    return folder


def test_cli_folders_identical_sets(tmp_path, capsys):
    real = _write_pngs(tmp_path / "real", _digits(12))
    fake = _write_pngs(tmp_path / "fake", _digits(12))
    output = tmp_path / "metrics.json"
    code = cli(["evaluate", "generation", "--real-dir", str(real), "--generated-dir", str(fake), "--k", "2",
                "--output", str(output), "--no-progress"])
    assert code == 0, capsys.readouterr().err
    metrics = json.loads(output.read_text())
    assert metrics["num_real"] == metrics["num_generated"] == 12
    assert metrics["fid"] < 1e-3 and metrics["precision"] == metrics["recall"] == 1.0
    assert "inception_score" not in metrics  # no classifier given
    assert "| fid |" in capsys.readouterr().out


def test_sampling_does_not_depend_on_batch_size():
    from mage_hf import load_default_pipeline

    pipe = load_default_pipeline()
    pipe.set_progress_bar_config(disable=True)
    kwargs = dict(indices=range(5), seed=3, class_labels=[0, 1, 2, 3, 4], num_inference_steps=4, guidance_scale=2.0)
    chunked = torch.cat(list(sample_uint8_batches(pipe, batch_size=2, **kwargs)))
    whole = torch.cat(list(sample_uint8_batches(pipe, batch_size=5, **kwargs)))
    assert chunked.dtype == torch.uint8 and chunked.shape == (5, 3, 32, 32)
    torch.testing.assert_close(chunked, whole, atol=1, rtol=0)  # equal up to a rounding step of 8-bit output


def test_cli_samples_pipeline_saves_png_and_statistics(tmp_path, capsys):
    from mage_hf.mnist import build_dataset_dict

    data = build_dataset_dict()
    data["test"] = data["test"].select(range(16))
    data.save_to_disk(str(tmp_path / "mnist"))
    base = ["evaluate", "generation", "--real-dataset", str(tmp_path / "mnist"), "--real-split", "test",
            "--pipeline", "default", "--num-images", "6", "--batch-size", "4", "--num-inference-steps", "4",
            "--class-conditional", "--guidance-scale", "2", "--k", "2", "--no-progress"]
    code = cli(base + ["--save-dir", str(tmp_path / "samples"), "--save-real-statistics", str(tmp_path / "ref.npz"),
                       "--output", str(tmp_path / "a.json")])
    assert code == 0, capsys.readouterr().err
    pngs = sorted((tmp_path / "samples").glob("*.png"))
    assert len(pngs) == 6 and PIL.Image.open(pngs[0]).size == (32, 32)
    assert not (tmp_path / "samples.partial").exists()
    first = json.loads((tmp_path / "a.json").read_text())
    assert first["num_real"] == 16 and first["num_generated"] == 6 and first["fid"] > 0
    assert {"kid", "precision", "recall"} <= set(first)

    # the saved statistics give the same FID without the real images
    stats_run = ["evaluate", "generation", "--real-statistics", str(tmp_path / "ref.npz"), "--generated-dir",
                 str(tmp_path / "samples"), "--output", str(tmp_path / "b.json"), "--no-progress"]
    assert cli(stats_run) == 0
    assert json.loads((tmp_path / "b.json").read_text())["fid"] == pytest.approx(first["fid"], rel=1e-6)


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--generated-dir", "{empty}"], "holds no images"),
        (["--generated-dir", "{gray}"], "grayscale"),
        (["--generated-dir", "{big}"], "differ in size"),
        (["--generated-dir", "{mixed}"], "differ in size"),
        (["--pipeline", "default", "--guidance-scale", "3"], "needs classes"),
        ([], "exactly one of `--generated-dir` and `--pipeline`"),
        (["--generated-dir", "{real}", "--save-dir", "x"], "needs `--pipeline`"),
        (["--pipeline", "default", "--num-images", "0"], "--num-images"),
    ],
)
def test_cli_bad_input(tmp_path, capsys, flags, message):
    digits = _digits(3)
    folders = {
        "real": _write_pngs(tmp_path / "real", digits),
        "empty": tmp_path / "empty",
        "gray": _write_pngs(tmp_path / "gray", digits, mode="L"),
        "big": _write_pngs(tmp_path / "big", torch.nn.functional.interpolate(digits, scale_factor=2)),
        "mixed": _write_pngs(tmp_path / "mixed", digits),
    }
    folders["empty"].mkdir()
    PIL.Image.new("RGB", (40, 40)).save(folders["mixed"] / "zz.png")
    flags = [flag.format(**folders) for flag in flags]
    output = tmp_path / "out.json"
    code = cli(["evaluate", "generation", "--real-dir", str(folders["real"]), "--no-progress", "--k", "1",
                "--output", str(output), *flags])
    assert code == 2
    assert message in capsys.readouterr().err
    assert not output.exists()


def test_cli_grayscale_accepted_when_asked(tmp_path):
    real = _write_pngs(tmp_path / "real", _digits(4), mode="L")
    assert cli(["evaluate", "generation", "--real-dir", str(real), "--generated-dir", str(real), "--k", "1",
                "--convert-grayscale", "--no-progress"]) == 0
