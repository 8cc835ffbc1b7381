"""The embedded mage-mnist model: loads offline by name and generates the asked digits (independent judge)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import AutoImageProcessor, AutoModel

import mage_hf
from mage_hf import DEFAULT_MODEL, DEFAULT_PIPELINE, MageModel, MagePipeline
from mage_hf.commands import main as cli_main

pytest.importorskip("sklearn")
pytest.importorskip("mlxtend")


@pytest.fixture(scope="module")
def pipe() -> MagePipeline:
    pipeline = mage_hf.load_default_pipeline()
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


@pytest.fixture(scope="module")
def judge():
    """An independent digit classifier (scikit-learn MLP on the real training digits), not MAGE."""
    from sklearn.neural_network import MLPClassifier

    from mage_hf.mnist import load_mnist_arrays, split_indices

    digits, labels = load_mnist_arrays()
    train, test = split_indices(labels)
    flat = digits.reshape(len(digits), -1).astype(np.float32) / 255.0
    classifier = MLPClassifier(hidden_layer_sizes=(128,), max_iter=60, random_state=0).fit(flat[train], labels[train])
    assert classifier.score(flat[test], labels[test]) > 0.9
    return classifier


def test_default_model_is_class_conditional(pipe):
    config = pipe.transformer.config
    assert config.num_condition_classes == 10 and config.image_size == 32
    assert config.fake_class_id not in {config.condition_token_id(c) for c in range(10)}
    assert pipe.get_label_ids("7") == [7]


def test_generated_digits_are_the_asked_class(pipe, judge):
    """A small sample: 3 images per class; the full measurement is scripts/evaluate_mage_mnist.py."""
    labels = [digit for digit in range(10) for _ in range(3)]
    images = pipe(class_label=labels, guidance_scale=2.0, generator=torch.Generator().manual_seed(0),
                  output_type="np").images
    predictions = judge.predict(images.mean(axis=-1).reshape(len(images), -1))
    accuracy = float((predictions == np.array(labels)).mean())
    assert accuracy >= 0.8, f"judge recognised {accuracy:.0%} of the generated digits"


def test_pipeline_from_default_is_deterministic(pipe):
    a = pipe(class_label=1, generator=torch.Generator().manual_seed(0), output_type="latent").images
    b = MagePipeline.from_pretrained(DEFAULT_PIPELINE)(class_label=1, generator=torch.Generator().manual_seed(0),
                                                        output_type="latent").images
    assert torch.equal(a, b)


@torch.no_grad()
def test_default_features_load_with_auto_classes():
    model = AutoModel.from_pretrained(DEFAULT_MODEL).eval()
    processor = AutoImageProcessor.from_pretrained(DEFAULT_MODEL)
    assert isinstance(model, MageModel)
    from mage_hf.mnist import load_mnist_arrays

    digits, _ = load_mnist_arrays()
    inputs = processor(images=[digits[0], digits[1]], return_tensors="pt")
    out = model(**inputs)
    assert out.pooler_output.shape == (2, model.config.hidden_size)


def test_generate_command_writes_grid_and_pngs(tmp_path, capsys):
    grid = tmp_path / "samples.png"
    code = cli_main([
        "generate", "--class-label", "1", "--num-images", "2", "--num-inference-steps", "4", "--output", str(grid),
        "--output-dir", str(tmp_path / "each"), "--no-progress",
    ])
    assert code == 0
    assert grid.is_file() and len(list((tmp_path / "each").glob("*.png"))) == 2
    assert str(grid.resolve()) in capsys.readouterr().out


def test_generate_command_rejects_bad_labels(tmp_path, capsys):
    code = cli_main(["generate", "--class-label", "12", "--num-images", "1", "--output", str(tmp_path / "x.png"),
                     "--no-progress"])
    assert code == 2 and "class_label" in capsys.readouterr().err
    assert not (tmp_path / "x.png").exists()
