"""Representation evaluation: the probes on toy features, feature extraction from tiny random models, the CLI."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
import types

import numpy as np
import PIL.Image
import pytest
import torch

from mage_hf.evaluation.representation import (
    FeatureExtractor,
    _train_bn_linear,
    evaluate_features,
    extract_features,
    few_shot_accuracy,
    format_results,
    knn_accuracy,
    linear_probe_accuracy,
)

IMAGE_SIZE = 32


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny tensors: one thread avoids OpenMP hand-offs, which are very slow on a busy shared CPU."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def clustered(num_classes=3, per_class=20, dim=8, spread=0.05, seed=0):
    """Well separated clusters: (N, dim) features, (N,) labels."""
    generator = torch.Generator().manual_seed(seed)
    centres = torch.randn(num_classes, dim, generator=generator) * 3
    labels = torch.arange(num_classes).repeat_interleave(per_class)
    return centres[labels] + spread * torch.randn(len(labels), dim, generator=generator), labels


def random_images(count, seed=0):
    """RGB 32x32 and grayscale 28x28 images, alternating."""
    rng = np.random.default_rng(seed)
    return [
        PIL.Image.fromarray(rng.integers(0, 256, (IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8))
        if i % 2 == 0 else PIL.Image.fromarray(rng.integers(0, 256, (28, 28), dtype=np.uint8), mode="L")
        for i in range(count)
    ]


# ------------------------------------------------------------------------------------------------ probes


def test_knn_on_clusters_is_perfect_and_on_shuffled_labels_near_chance():
    train_x, train_y = clustered(seed=0)
    test_x, test_y = clustered(seed=0, per_class=5)
    assert knn_accuracy(train_x, train_y, test_x, test_y, k=5) == 1.0

    generator = torch.Generator().manual_seed(1)
    x = torch.randn(800, 16, generator=generator)
    y = torch.randint(0, 4, (800,), generator=generator)
    accuracy = knn_accuracy(x[:400], y[:400], x[400:], y[400:], k=10)
    assert abs(accuracy - 0.25) < 0.08


def test_knn_by_hand():
    # cosine similarities of the test point to the three train points: 1, 0.8, 0
    train_x = torch.tensor([[2.0, 0.0], [0.8, 0.6], [0.0, 3.0]])
    train_y = torch.tensor([0, 1, 1])
    test_x, test_y = torch.tensor([[1.0, 0.0]]), torch.tensor([1])
    # k=2, T=1: votes class 0: e^1 = 2.72, class 1: e^0.8 = 2.23 -> 0 (wrong)
    assert knn_accuracy(train_x, train_y, test_x, test_y, k=2, temperature=1.0) == 0.0
    # k=3, T=1: class 1 also gets e^0 = 1 -> 3.23 > 2.72 -> 1 (right)
    assert math.exp(0.8) + 1 > math.e
    assert knn_accuracy(train_x, train_y, test_x, test_y, k=3, temperature=1.0) == 1.0
    # k=3, T=0.07: e^(1/0.07) outweighs e^(0.8/0.07) + 1 -> 0
    assert knn_accuracy(train_x, train_y, test_x, test_y, k=3, temperature=0.07) == 0.0
    # k larger than the training set is clipped to it
    assert knn_accuracy(train_x, train_y, test_x, test_y, k=50, temperature=1.0) == 1.0


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"k": 0}, "--k"), ({"temperature": 0.0}, "temperature")],
)
def test_knn_rejects_bad_arguments(kwargs, match):
    x, y = clustered()
    with pytest.raises(ValueError, match=match):
        knn_accuracy(x, y, x, y, **kwargs)


def test_probe_inputs_are_checked():
    x, y = clustered()
    with pytest.raises(ValueError, match="train_y"):
        linear_probe_accuracy(x, y.float(), x, y)
    with pytest.raises(ValueError, match="width"):
        knn_accuracy(x, y, x[:, :4], y)
    with pytest.raises(ValueError, match="non-empty"):
        knn_accuracy(x[:0], y[:0], x, y)
    with pytest.raises(ValueError, match="--linear-method"):
        linear_probe_accuracy(x, y, x, y, method="svm")


@pytest.mark.parametrize("method", ["logistic", "bn-linear"])
def test_linear_probe_separable_data(method):
    train_x, train_y = clustered(per_class=30, seed=2)
    test_x, test_y = clustered(per_class=10, seed=2)
    accuracy = linear_probe_accuracy(train_x, train_y, test_x, test_y, method=method, epochs=20, batch_size=16)
    assert accuracy == 1.0


def test_bn_linear_is_deterministic_per_seed():
    x, y = clustered(num_classes=4, per_class=25, spread=3.0, seed=3)
    kwargs = {"epochs": 5, "batch_size": 16, "optimizer": "sgd", "learning_rate": None, "weight_decay": 0.0}
    logits = [_train_bn_linear(x, y, 4, seed=seed, **kwargs)(x) for seed in (0, 0, 1)]
    assert torch.equal(logits[0], logits[1])
    assert not torch.equal(logits[0], logits[2])
    adamw = dict(kwargs, optimizer="adamw")
    assert torch.equal(_train_bn_linear(x, y, 4, seed=5, **adamw)(x), _train_bn_linear(x, y, 4, seed=5, **adamw)(x))


def test_few_shot_mean_and_std():
    train_x, train_y = clustered(per_class=12, spread=1.0, seed=4)
    test_x, test_y = clustered(per_class=10, spread=1.0, seed=4)
    results = few_shot_accuracy(train_x, train_y, test_x, test_y, shots=(1, 5), seeds=(0, 1, 2))
    assert set(results) == {1, 5}
    for mean, std in results.values():
        assert 0.0 <= mean <= 1.0 and std >= 0.0
    single = few_shot_accuracy(train_x, train_y, test_x, test_y, shots=(2,), seeds=(7,))
    assert single[2][1] == 0.0
    with pytest.raises(ValueError, match="--shots.*13"):
        few_shot_accuracy(train_x, train_y, test_x, test_y, shots=(13,), seeds=(0,))


def test_evaluate_features_is_json_able():
    train_x, train_y = clustered(per_class=10)
    test_x, test_y = clustered(per_class=4)
    results = evaluate_features(train_x, train_y, test_x, test_y, k=3, shots=(1, 2), seeds=(0, 1))
    assert json.loads(json.dumps(results)) == results
    assert results["linear"]["accuracy"] == results["knn"]["accuracy"] == 1.0
    assert set(results["few_shot"]["shots"]) == {"1", "2"}
    assert "| 2-shot (2 seeds) |" in format_results(results)
    with pytest.raises(ValueError, match="--probes"):
        evaluate_features(train_x, train_y, test_x, test_y, probes=("svm",))


# ------------------------------------------------------------------------------------------------ features


def _vit_kwargs():
    return {"image_size": IMAGE_SIZE, "patch_size": 8, "hidden_size": 32, "num_hidden_layers": 2,
            "num_attention_heads": 4, "intermediate_size": 64}


def _save(model, processor, folder):
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory):
    """Folders of tiny random MAGE, ViTMAE, I-JEPA and ViT models with their image processors."""
    from transformers import (
        IJepaConfig,
        IJepaModel,
        ViTConfig,
        ViTImageProcessor,
        ViTMAEConfig,
        ViTMAEModel,
        ViTModel,
    )

    from mage_hf import MageConfig, MageImageProcessor, MageModel

    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("models")
    vit_processor = ViTImageProcessor(size={"height": IMAGE_SIZE, "width": IMAGE_SIZE})
    return {
        "mage": _save(MageModel(MageConfig.from_preset("tiny")), MageImageProcessor.for_image_size(IMAGE_SIZE),
                      root / "mage"),
        "vit_mae": _save(ViTMAEModel(ViTMAEConfig(**_vit_kwargs(), decoder_hidden_size=32, decoder_num_hidden_layers=1,
                                                  decoder_num_attention_heads=4, decoder_intermediate_size=64)),
                         vit_processor, root / "vit_mae"),
        "ijepa": _save(IJepaModel(IJepaConfig(**_vit_kwargs())), vit_processor, root / "ijepa"),
        "vit": _save(ViTModel(ViTConfig(**_vit_kwargs())), vit_processor, root / "vit"),
    }


@pytest.mark.parametrize(
    ("model_type", "hidden", "pooling"),
    [("mage", 64, "pooler"), ("vit_mae", 32, "mean"), ("ijepa", 32, "mean"), ("vit", 32, "cls")],
)
def test_feature_extractor_auto_pooling_shapes_determinism(model_dirs, model_type, hidden, pooling):
    images = random_images(6)
    extractor = FeatureExtractor.from_pretrained(model_dirs[model_type], batch_size=4, device="cpu")
    assert extractor.model_type == model_type
    assert extractor.pooling_used == pooling
    first, second = extractor(images), extractor(images)
    assert first.shape == (6, hidden) and first.dtype == torch.float32 and first.device.type == "cpu"
    assert torch.equal(first, second)
    singles = FeatureExtractor(extractor.model, extractor.image_processor, batch_size=1)(images)
    torch.testing.assert_close(singles, first, atol=1e-5, rtol=1e-5)  # independent of batch composition


def test_explicit_pooling_rules(model_dirs):
    images = random_images(3)
    mage = FeatureExtractor.from_pretrained(model_dirs["mage"], pooling="mean", device="cpu")
    pooled = FeatureExtractor(mage.model, mage.image_processor, pooling="pooler")
    torch.testing.assert_close(mage(images), pooled(images))  # MAGE's pooler is the mean of its image tokens
    assert FeatureExtractor(mage.model, mage.image_processor, pooling="cls")(images).shape == (3, 64)

    vit = FeatureExtractor.from_pretrained(model_dirs["vit"], device="cpu")
    pixels = vit.image_processor(images=[image.convert("RGB") for image in images], return_tensors="pt")
    with torch.no_grad():
        hidden = vit.model(**pixels).last_hidden_state
    torch.testing.assert_close(vit(images), hidden[:, 0])
    as_mean = FeatureExtractor(vit.model, vit.image_processor, pooling="mean")
    torch.testing.assert_close(as_mean(images), hidden[:, 1:].mean(dim=1))

    ijepa = FeatureExtractor.from_pretrained(model_dirs["ijepa"], device="cpu")
    with pytest.raises(ValueError, match="`pooling` 'cls'"):
        FeatureExtractor(ijepa.model, ijepa.image_processor, pooling="cls")
    with pytest.raises(ValueError, match="`pooling` 'pooler'"):
        FeatureExtractor(ijepa.model, ijepa.image_processor, pooling="pooler")(images)
    with pytest.raises(ValueError, match="`pooling` must be one of"):
        FeatureExtractor(ijepa.model, ijepa.image_processor, pooling="max")


def test_auto_pooling_of_other_models_follows_the_output(model_dirs):
    """Unlisted model types: "pooler" when the output has a pooler_output (DINOv2), else "mean" (ViT-MSN)."""
    from transformers import AutoImageProcessor, Dinov2Config, Dinov2Model, ViTMSNConfig, ViTMSNModel

    processor = AutoImageProcessor.from_pretrained(model_dirs["vit"])
    sizes = {key: value for key, value in _vit_kwargs().items() if key != "intermediate_size"}
    for model, pooling in ((Dinov2Model(Dinov2Config(**sizes, mlp_ratio=2)), "pooler"),
                           (ViTMSNModel(ViTMSNConfig(**_vit_kwargs())), "mean")):
        extractor = FeatureExtractor(model, processor, device="cpu")
        assert extractor.pooling_used == pooling
        assert extractor(random_images(2)).shape == (2, 32)


def test_vit_mae_runs_unmasked(model_dirs):
    from transformers import ViTMAEModel

    images = random_images(4)
    extractor = FeatureExtractor.from_pretrained(model_dirs["vit_mae"], device="cpu")
    features = extractor(images)
    assert extractor.model.config.mask_ratio == 0.75  # restored after the forward

    unmasked = ViTMAEModel.from_pretrained(model_dirs["vit_mae"], mask_ratio=0.0).eval()
    pixels = extractor.image_processor(images=[image.convert("RGB") for image in images], return_tensors="pt")
    with torch.no_grad():
        hidden = unmasked(**pixels).last_hidden_state
    assert hidden.shape[1] == 1 + (IMAGE_SIZE // 8) ** 2
    torch.testing.assert_close(features, hidden[:, 1:].mean(dim=1), atol=1e-5, rtol=1e-5)


def test_extract_features_from_a_dataset(model_dirs):
    from datasets import Dataset

    dataset = Dataset.from_dict({"image": random_images(5), "label": [0, 1, 0, 1, 1], "other": list("abcde")})
    extractor = FeatureExtractor.from_pretrained(model_dirs["vit"], batch_size=2, device="cpu")
    features, labels = extract_features(extractor, dataset)
    assert features.shape == (5, 32) and labels.dtype == torch.int64 and labels.tolist() == [0, 1, 0, 1, 1]
    with pytest.raises(ValueError, match="--label-column"):
        extract_features(extractor, dataset, label_column="other")
    with pytest.raises(ValueError, match="--image-column"):
        extract_features(extractor, dataset, image_column="picture")


# ------------------------------------------------------------------------------------------------ CLI


@pytest.fixture(scope="module")
def dataset_dir(tmp_path_factory):
    """A `save_to_disk` folder: 24 train / 12 test random images, 2 classes (dark and bright)."""
    from datasets import ClassLabel, Dataset, DatasetDict, Features, Image

    rng = np.random.default_rng(0)

    def split(count):
        labels = [i % 2 for i in range(count)]
        images = [PIL.Image.fromarray(rng.integers(0, 128, (IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8) + 127 * y)
                  for y in labels]
        features = Features({"image": Image(), "label": ClassLabel(names=["dark", "bright"])})
        return Dataset.from_dict({"image": images, "label": labels}, features=features)

    folder = tmp_path_factory.mktemp("data") / "toy"
    DatasetDict({"train": split(24), "test": split(12)}).save_to_disk(str(folder))
    return str(folder)


@pytest.fixture
def cli():
    from mage_hf.commands import main

    return main


def test_cli_end_to_end(cli, model_dirs, dataset_dir, tmp_path, capsys):
    output = tmp_path / "out" / "results.json"
    code = cli(["evaluate", "representation", "--model", model_dirs["mage"], "--dataset-name", dataset_dir,
                "--k", "3", "--shots", "1", "2", "--seeds", "0", "1", "--batch-size", "8", "--max-test-samples", "10",
                "--device", "cpu", "--no-progress", "--output", str(output)])
    assert code == 0
    results = json.loads(output.read_text())
    assert {"model", "model_type", "pooling", "dataset", "num_train", "num_test", "feature_dim", "linear", "knn",
            "few_shot"} <= set(results)
    assert (results["model_type"], results["pooling"]) == ("mage", "pooler")
    assert (results["num_train"], results["num_test"], results["feature_dim"]) == (24, 10, 64)
    assert set(results["few_shot"]["shots"]) == {"1", "2"}
    assert [p.name for p in output.parent.iterdir()] == ["results.json"]  # no temporary file left
    assert "| linear (logistic) |" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("extra", "flag"),
    [
        (["--image-column", "img"], "--image-column"),
        (["--label-column", "target"], "--label-column"),
        (["--test-split", "validation"], "--test-split"),
        (["--shots", "20"], "--shots"),
        (["--k", "0"], "--k"),
        (["--max-train-samples", "0"], "--max-train-samples"),
    ],
)
def test_cli_bad_input_names_the_flag(cli, dataset_dir, tmp_path, capsys, extra, flag):
    missing_model = str(tmp_path / "no-model")  # every error comes before the model is loaded
    assert cli(["evaluate", "representation", "--model", missing_model, "--dataset-name", dataset_dir, *extra]) == 2
    error = capsys.readouterr().err
    assert error.startswith("mage-hf evaluate: error: ") and flag in error


def test_cli_rejects_unknown_pooling(cli, dataset_dir, capsys):
    assert cli(["evaluate", "representation", "--model", "m", "--dataset-name", dataset_dir, "--pooling", "max"]) == 2
    assert "--pooling" in capsys.readouterr().err
