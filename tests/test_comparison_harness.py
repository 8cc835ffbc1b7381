"""The comparison harness (`mage_hf.comparison.harness`, `.tasks`) and the MNIST study script: every contender
trains through the one training loop, the random-initialisation baseline is the run's step 0, checkpoints load,
MAE / I-JEPA folders load with AutoModel, I-JEPA's EMA resumes exactly, and `scripts/study_mnist.py --quick` runs
the whole study on a tiny budget."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from mage_hf import DEFAULT_PIPELINE
from mage_hf.comparison.harness import CONTENDERS, ProbeData, load_checkpoint, probe_features, raw_pixel_features
from test_comparison_ijepa import _one_thread  # noqa: F401 - autouse: tiny models run on one thread

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def digits(tmp_path_factory) -> Path:
    from mage_hf.mnist import save_mnist

    return save_mnist(tmp_path_factory.mktemp("digits") / "mnist")


def _flags(digits: Path, output_dir: Path, key: str, steps: int = 2, **extra: str) -> list[str]:
    flags = ["--dataset-name", str(digits), "--output-dir", str(output_dir), "--train-batch-size", "4",
             "--max-train-steps", str(steps), "--warmup-steps", "0", "--checkpointing-steps", "1",
             "--max-train-samples", "16", "--no-horizontal-flip", "--logging-steps", "1"]
    if key.startswith("mage"):
        flags += ["--model-config", "tiny", "--tokenizer", str(DEFAULT_PIPELINE)]
    else:
        flags += ["--model-config", "mnist"]
    for name, value in extra.items():
        flags += [f"--{name.replace('_', '-')}", value]
    return flags


def _max_difference(a: dict, b: dict) -> float:
    return max((a[k].float() - b[k].float()).abs().max().item() for k in a)


@pytest.mark.parametrize("key", ["mae", "ijepa"])
def test_initial_module_is_the_runs_step_zero(digits, tmp_path, key):
    """A step at a vanishing learning rate leaves the weights where the run started: `initial_module` builds them."""
    contender = CONTENDERS[key]
    flags = _flags(digits, tmp_path, key, steps=1, learning_rate="1e-12", weight_decay="0", seed="3")
    contender.train(flags)
    initial, trained = contender.initial_module(flags), contender.initial_module(flags)
    load_checkpoint(trained, tmp_path / "checkpoint-1")
    assert _max_difference(initial.state_dict(), trained.state_dict()) < 1e-9
    other_seed = contender.initial_module([value if value != "3" else "4" for value in flags])
    assert _max_difference(initial.state_dict(), other_seed.state_dict()) > 1e-3


def test_load_checkpoint_refuses_another_architecture(digits, tmp_path):
    CONTENDERS["mae"].train(_flags(digits, tmp_path, "mae", steps=1))
    ijepa = CONTENDERS["ijepa"].initial_module(_flags(digits, tmp_path / "other", "ijepa"))
    with pytest.raises(ValueError, match="does not fit"):
        load_checkpoint(ijepa, tmp_path / "checkpoint-1")
    with pytest.raises(ValueError, match="holds no"):
        load_checkpoint(ijepa, tmp_path / "logs")


def test_mage_checkpoint_loads_despite_the_tied_projection(digits, tmp_path):
    contender = CONTENDERS["mage"]
    flags = _flags(digits, tmp_path, "mage", steps=1)
    contender.train(flags)
    module = load_checkpoint(contender.initial_module(flags), tmp_path / "checkpoint-1")
    from mage_hf import MageForMaskedImageModeling

    final = MageForMaskedImageModeling.from_pretrained(tmp_path)
    assert _max_difference(final.state_dict(), module.state_dict()) == 0.0


def test_mae_folder_loads_with_automodel_and_has_its_own_card(digits, tmp_path):
    from transformers import AutoImageProcessor, AutoModel

    CONTENDERS["mae"].train(_flags(digits, tmp_path, "mae", steps=1, mask_ratio="0.6"))
    model = AutoModel.from_pretrained(tmp_path)
    assert type(model).__name__ == "ViTMAEModel" and model.config.mask_ratio == 0.6
    pixels = AutoImageProcessor.from_pretrained(tmp_path)(images=[np.zeros((32, 32, 3), np.uint8)],
                                                          return_tensors="pt")["pixel_values"]
    assert pixels.shape == (1, 3, 32, 32) and float(pixels.min()) == -1.0  # mean / std 0.5, as in training
    card = (tmp_path / "README.md").read_text()
    assert "ViTMAE" in card and "MAGE" not in card


def test_ijepa_target_follows_the_ema_and_resumes_exactly(digits, tmp_path):
    """The loop's `after_optimizer_step` hook moves the target encoder; a run resumed from checkpoint-2 ends with
    the weights of the uninterrupted run (the EMA state and its schedule are in the checkpoint)."""
    import shutil

    from transformers import AutoModel

    contender = CONTENDERS["ijepa"]
    straight = [*_flags(digits, tmp_path / "straight", "ijepa", steps=4, learning_rate="1e-3"),
                "--ema-momentum", "0.5", "1.0"]
    contender.train(straight)
    resumed = tmp_path / "resumed"
    resumed.mkdir()
    shutil.copytree(tmp_path / "straight" / "checkpoint-2", resumed / "checkpoint-2")
    contender.train([str(resumed) if value == str(tmp_path / "straight") else value for value in straight]
                    + ["--resume-from-checkpoint", "latest"])
    a = AutoModel.from_pretrained(tmp_path / "straight").state_dict()
    assert _max_difference(a, AutoModel.from_pretrained(resumed).state_dict()) == 0.0
    initial = contender.initial_module(straight)
    trained = load_checkpoint(contender.initial_module(straight), tmp_path / "straight" / "checkpoint-4")
    target, context = trained.target_encoder.state_dict(), trained.context_encoder.state_dict()
    assert _max_difference(initial.target_encoder.state_dict(), target) > 0  # the EMA moved the target
    assert _max_difference(target, context) > 0  # ... and it is not the context encoder
    assert _max_difference(target, a) == 0.0  # the final folder is the target encoder


def test_contenders_have_matched_encoders(digits, tmp_path):
    """The same 6 x 128 encoder everywhere; MAGE, MAE and I-JEPA train within 5 % of each other's parameter count
    (MAGE-C adds only its projection head)."""
    counts, encoders = {}, {}
    for key, contender in CONTENDERS.items():
        flags = _flags(digits, tmp_path, key)
        if key.startswith("mage"):
            flags[flags.index("tiny")] = str(REPO_ROOT / "src/mage_hf/pretrained/mage-mnist/model")
        module = contender.initial_module(flags)
        encoder, _ = contender.evaluation_encoder(module)
        assert encoder.config.hidden_size == 128 and encoder.config.num_hidden_layers == 6
        counts[key] = contender.trainable_parameters(module)
        encoders[key] = sum(p.numel() for n, p in encoder.named_parameters() if "vqgan" not in n)
    plain = [counts[key] for key in ("mage", "mae", "ijepa")]
    assert max(plain) / min(plain) < 1.05, counts
    assert encoders["mage-c"] == encoders["mage"] and counts["mage-c"] > counts["mage"]


def test_probe_data_validation_split_and_raw_pixels(digits):
    data = ProbeData.from_saved_dataset(digits, max_per_class=8, max_test_per_class=2)
    assert np.bincount(data.train_labels.numpy()).tolist() == [8] * 10
    assert data.train_images.dtype == torch.uint8 and data.train_images.shape[1:] == (3, 32, 32)
    fit, held = data.validation_indices(0.25)
    assert set(fit.tolist()).isdisjoint(held.tolist()) and len(fit) + len(held) == 80
    assert np.bincount(data.train_labels[held].numpy()).tolist() == [2] * 10
    features = raw_pixel_features(data.train_images)
    assert features.shape == (80, 3072) and float(features.max()) <= 1.0
    assert probe_features(features * float("nan"), data.train_labels, features, data.train_labels) == {"diverged": True}


@pytest.mark.slow
def test_quick_study_runs_end_to_end_and_resumes(tmp_path):
    """`scripts/study_mnist.py --quick`: every phase on a tiny budget; the outputs exist and are well-formed (the
    numbers are not checked). A second invocation trains nothing."""
    command = [sys.executable, str(REPO_ROOT / "scripts" / "study_mnist.py"), "--quick", "--work-dir",
               str(tmp_path / "work"), "--docs-dir", str(tmp_path / "docs")]
    first = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path, timeout=600)
    assert first.returncode == 0, first.stderr[-3000:]
    results = json.loads((tmp_path / "docs" / "results.json").read_text())
    assert results["planned_runs"] == len(results["sweep"]) + len(results["main"]) + len(results["ablation"]) == 14
    assert {r["method"] for r in results["main"]} == {"mage", "mage-c", "mae", "ijepa"}
    assert set(results["chosen"]) == {"mage", "mage-c", "mae", "ijepa"}
    assert set(results["initialisation"]) == {"mage-s0", "mage-c-s0", "mae-s0", "ijepa-s0"}
    for record in results["main"] + results["ablation"]:
        assert set(record["probes"]) == {"1", "2"}
        assert 0.0 <= record["probes"]["2"]["linear"]["accuracy"] <= 1.0
    scored = [r for r in results["main"] + results["ablation"] if r["method"] == "mage"]
    assert len(scored) == 3 and all(r["generation"]["fid"] >= 0 for r in scored)
    text = (tmp_path / "docs" / "results.md").read_text()
    for needle in ("raw pixels", "random init", "MAGE-C", "I-JEPA", "fixed 75 %", "FID", "--quick", "```bash"):
        assert needle in text, needle
    for name in ("probes", "sweep", "ablation"):
        assert (tmp_path / "docs" / "images" / f"results_{name}.png").stat().st_size > 1000
    second = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path, timeout=600)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "training " not in second.stdout
