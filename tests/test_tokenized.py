"""Pre-tokenized pretraining: `mage-hf tokenize-dataset` (parquet shards + manifest, resumable, the same tokens
whatever the sharding, batching or number of processes) and `mage-hf pretrain --tokenized-dataset` (the same weights
as the pixel path while every epoch has its own view, a complete saved model, exact kill-and-resume, two processes
with identical weights). The `tiny` preset's random VQGAN on 48 MNIST digits."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from datasets import load_dataset
from test_sharding import _two_processes
from test_training import Killed, _fresh_accelerate_state, _one_thread, read_summary, run_cli  # noqa: F401

from mage_hf import MageConfig, MageForMaskedImageModeling, MagePipeline, MageVQModel
from mage_hf.training import pretrain, tokenized
from mage_hf.training.data import ImageTransform
from mage_hf.training.loop import list_checkpoints, state_dict_digest

NUM_VIEWS = 3
# 48 examples at batch 8: 6 steps per epoch, so 8 steps end inside epoch 1 (< NUM_VIEWS epochs).
TRAIN = ["--model-config", "tiny", "--train-batch-size", "8", "--warmup-steps", "1", "--logging-steps", "2",
         "--checkpointing-steps", "0"]


def tokenize_argv(source: str, tokenizer: Path, output: Path, *extra: str) -> list:
    return ["tokenize-dataset", "--tokenizer", tokenizer, "--dataset-name", source, "--output-dir", output,
            "--num-views", str(NUM_VIEWS), "--shard-size", "20", "--batch-size", "8", "--device", "cpu",
            "--no-progress", *extra]


@pytest.fixture(scope="module")
def digits(tmp_path_factory) -> str:
    """48 training and 16 test MNIST digits (32 px RGB, ClassLabel), a `save_to_disk` folder."""
    from mage_hf.mnist import build_dataset_dict

    data = build_dataset_dict()
    data["train"] = data["train"].shuffle(seed=0).select(range(48))
    data["test"] = data["test"].shuffle(seed=0).select(range(16))
    folder = tmp_path_factory.mktemp("digits") / "mnist"
    data.save_to_disk(str(folder))
    return str(folder)


def save_random_tokenizer(folder: Path, seed: int) -> Path:
    torch.manual_seed(seed)
    MageVQModel(**MageConfig.from_preset("tiny").vq_config).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory) -> Path:
    return save_random_tokenizer(tmp_path_factory.mktemp("tokenizer") / "vq", seed=0)


@pytest.fixture(scope="module")
def tokens(digits, tokenizer_dir, tmp_path_factory) -> Path:
    """`tokenize-dataset` of the digits: 3 views, shards of 20 (3 shards)."""
    out = tmp_path_factory.mktemp("tokens") / "digits-tokens"
    assert run_cli(*tokenize_argv(digits, tokenizer_dir, out)) == 0
    return out


def token_array(folder: Path) -> np.ndarray:
    return np.asarray(load_dataset(str(folder), split="train").with_format("numpy")["input_ids"])


# ---------------------------------------------------------------------------------------------------------------
# tokenize-dataset
# ---------------------------------------------------------------------------------------------------------------


def test_tokenize_dataset_writes_a_loadable_dataset_and_its_manifest(tokens, tokenizer_dir):
    manifest = json.loads((tokens / tokenized.MANIFEST_FILE).read_text())
    tokenizer = MageVQModel.from_pretrained(tokenizer_dir)
    assert manifest["complete"] and manifest["num_examples"] == 48 and manifest["num_views"] == NUM_VIEWS
    assert manifest["tokenizer_sha256"] == state_dict_digest(tokenizer.state_dict())
    assert (manifest["codebook_size"], manifest["image_size"], manifest["token_grid_size"]) == (64, 32, 8)
    assert manifest["augmentation"]["random_resized_crop_scale"] == [0.2, 1.0]
    assert manifest["shards"] == [f"data/train-{i:05d}-of-00003.parquet" for i in range(3)]
    assert manifest["label_names"] == [str(i) for i in range(10)]

    data = load_dataset(str(tokens), split="train")  # the folder alone: the manifest is not taken for data
    assert len(data) == 48 and data.features["label"].names == manifest["label_names"]
    assert data.features["input_ids"].feature.feature.dtype == "uint16"
    ids = token_array(tokens)
    assert ids.shape == (48, NUM_VIEWS, 64)
    assert not list(tokens.rglob(".*"))  # no temporary files left

    # view v of example i: the pixel path's augmentation of example i in epoch v, tokenized
    from mage_hf.training.data import INDEX_COLUMN, load_dataset_splits

    images = load_dataset_splits(manifest["source"]["dataset_name"], None, False)["train"]
    transform = ImageTransform("image", None, 32, train=True, seed=0)
    transform.set_epoch(2)
    pixels = transform({"image": images[:4]["image"], INDEX_COLUMN: [0, 1, 2, 3]})["pixel_values"]
    assert np.array_equal(tokenizer.tokenize(torch.stack(pixels)).numpy(), ids[:4, 2])


def test_tokens_do_not_depend_on_shards_batches_or_resuming(digits, tokenizer_dir, tokens, tmp_path, monkeypatch):
    other = tmp_path / "one-shard"
    assert run_cli(*tokenize_argv(digits, tokenizer_dir, other), "--shard-size", "48", "--batch-size", "5") == 0
    assert np.array_equal(token_array(other), token_array(tokens))

    # killed after its first shard: no manifest marked complete, no half shard; a rerun does the rest
    killed = tmp_path / "killed"
    original, written = tokenized.write_shard, []

    def dying_write(path, *args):
        if written:
            raise Killed
        written.append(path)
        original(path, *args)

    monkeypatch.setattr(tokenized, "write_shard", dying_write)
    with pytest.raises(Killed):
        run_cli(*tokenize_argv(digits, tokenizer_dir, killed))
    monkeypatch.setattr(tokenized, "write_shard", original)
    assert not json.loads((killed / tokenized.MANIFEST_FILE).read_text())["complete"]
    assert sorted(p.name for p in (killed / "data").iterdir()) == ["train-00000-of-00003.parquet"]
    with pytest.raises(ValueError, match="unfinished"):
        run_cli("pretrain", *TRAIN, "--tokenized-dataset", killed, "--output-dir", tmp_path / "run")
    first = (killed / written[0]).stat().st_mtime_ns
    assert run_cli(*tokenize_argv(digits, tokenizer_dir, killed)) == 0
    assert (killed / written[0]).stat().st_mtime_ns == first  # skipped, not rewritten
    assert np.array_equal(token_array(killed), token_array(tokens))

    with pytest.raises(ValueError, match="num_views: 3 -> 2"):
        run_cli(*tokenize_argv(digits, tokenizer_dir, killed), "--num-views", "2")
    assert run_cli(*tokenize_argv(digits, tokenizer_dir, killed), "--num-views", "2", "--overwrite") == 0
    assert token_array(killed).shape == (48, 2, 64)


@pytest.mark.slow
def test_two_processes_write_the_same_tokens(digits, tokenizer_dir, tokens, tmp_path):
    argv = [str(a) for a in tokenize_argv(digits, tokenizer_dir, tmp_path / "two")]
    _two_processes(*argv, cwd=tmp_path)
    assert np.array_equal(token_array(tmp_path / "two"), token_array(tokens))


def test_view_choice_covers_every_view_once_per_cycle():
    for index in range(5):
        assert [tokenized.view_for_epoch(0, epoch, index, 4) for epoch in range(4)] == [0, 1, 2, 3]
        for cycle in (1, 2):
            assert sorted(tokenized.view_for_epoch(0, 4 * cycle + e, index, 4) for e in range(4)) == [0, 1, 2, 3]
    assert len({tuple(tokenized.view_for_epoch(0, e, i, 4) for e in range(4, 8)) for i in range(20)}) > 1
    assert tokenized.token_dtype(65536) == "uint16" and tokenized.token_dtype(65537) == "int32"


# ---------------------------------------------------------------------------------------------------------------
# pretrain --tokenized-dataset
# ---------------------------------------------------------------------------------------------------------------


def test_tokenized_pretraining_equals_the_pixel_path_within_the_first_views(digits, tokenizer_dir, tokens, tmp_path):
    """Epochs 0 .. K-1 take views 0 .. K-1, the pixel path's crops of those epochs: the same weights, bit for bit."""
    assert run_cli("pretrain", *TRAIN, "--max-train-steps", "8", "--tokenized-dataset", tokens,
                   "--output-dir", tmp_path / "tokens") == 0
    assert run_cli("pretrain", *TRAIN, "--max-train-steps", "8", "--tokenizer", tokenizer_dir,
                   "--dataset-name", digits, "--output-dir", tmp_path / "pixels") == 0
    from_tokens = MageForMaskedImageModeling.from_pretrained(tmp_path / "tokens")
    from_pixels = MageForMaskedImageModeling.from_pretrained(tmp_path / "pixels")
    assert state_dict_digest(from_tokens.state_dict()) == state_dict_digest(from_pixels.state_dict())


def test_tokenized_pretraining_saves_a_complete_model(tokens, tokenizer_dir, tmp_path):
    out = tmp_path / "conditional"
    assert run_cli("pretrain", *TRAIN, "--max-train-steps", "2", "--tokenized-dataset", tokens, "--output-dir", out,
                   "--class-conditional", "--tokenizer", tokenizer_dir) == 0
    model = MageForMaskedImageModeling.from_pretrained(out)
    assert model.config.include_vq_tokenizer and model.config.num_condition_classes == 10
    tokenizer = MageVQModel.from_pretrained(tokenizer_dir)
    assert state_dict_digest(model.mage.vqgan.state_dict()) == state_dict_digest(tokenizer.state_dict())
    assert model(pixel_values=torch.rand(2, 3, 32, 32), class_labels=torch.tensor([1, 2])).loss.isfinite()
    pipe = MagePipeline.from_masked_image_model(model)
    pipe.set_progress_bar_config(disable=True)
    images = pipe(class_label=[3], num_inference_steps=2, output_type="np", generator=torch.Generator().manual_seed(0))
    assert images.images.shape == (1, 32, 32, 3)
    assert read_summary(out)["global_step"] == 2


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--dataset-name", "x"], "drop `--dataset-name`"),
        (["--contrastive"], "`--contrastive`"),
        (["--tokenizer", "OTHER"], "did not make `--tokenized-dataset`"),
    ],
)
def test_tokenized_pretraining_refuses(tokens, tmp_path, extra, message):
    if "OTHER" in extra:
        extra = ["--tokenizer", save_random_tokenizer(tmp_path / "other", seed=1)]
    out = tmp_path / "run"
    with pytest.raises(ValueError, match=message):
        run_cli("pretrain", *TRAIN, "--max-train-steps", "1", "--tokenized-dataset", tokens, "--output-dir", out,
                *extra)
    assert not (out / "config.json").exists()


def test_tokens_must_fit_the_model(tokens):
    manifest = tokenized.read_manifest(tokens)
    tokenizer = MageVQModel.from_pretrained(manifest["tokenizer"])
    tiny = MageConfig.from_preset("tiny")
    tokenized.check_tokens_fit(manifest, tiny, tokenizer, "test")
    bigger = MageConfig.from_preset("tiny", codebook_size=128, vq_config={**tiny.vq_config, "num_vq_embeddings": 128})
    with pytest.raises(ValueError, match="codebook_size 64, the model 128"):
        tokenized.check_tokens_fit(manifest, bigger, tokenizer, "test")


def test_killed_tokenized_run_resumes_to_identical_weights(tokens, tmp_path, monkeypatch):
    # batch 4 x accumulation 2: 6 steps per epoch; 20 steps reach epoch 3, the first of the second cycle of views.
    argv = ["pretrain", "--model-config", "tiny", "--tokenized-dataset", tokens, "--max-train-steps", "20",
            "--train-batch-size", "4", "--gradient-accumulation-steps", "2", "--warmup-steps", "2",
            "--checkpointing-steps", "7", "--logging-steps", "2"]
    straight = tmp_path / "straight"
    assert run_cli(*argv, "--output-dir", straight) == 0

    original_step, calls = pretrain.PretrainingTask.training_step, {"n": 0}

    def dying_step(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 31:  # first micro-batch of step 16, after checkpoint-14
            raise Killed
        return original_step(self, *args, **kwargs)

    interrupted = tmp_path / "interrupted"
    monkeypatch.setattr(pretrain.PretrainingTask, "training_step", dying_step)
    with pytest.raises(Killed):
        run_cli(*argv, "--output-dir", interrupted)
    monkeypatch.setattr(pretrain.PretrainingTask, "training_step", original_step)
    assert [p.name for p in list_checkpoints(interrupted)] == ["checkpoint-7", "checkpoint-14"]
    assert run_cli(*argv, "--output-dir", interrupted, "--resume-from-checkpoint", "latest") == 0
    expected = MageForMaskedImageModeling.from_pretrained(straight).state_dict()
    resumed = MageForMaskedImageModeling.from_pretrained(interrupted).state_dict()
    assert state_dict_digest(resumed) == state_dict_digest(expected)


@pytest.mark.slow
def test_two_cpu_processes_train_on_tokens_to_identical_weights(tokens, tmp_path):
    out = tmp_path / "ddp"
    _two_processes("pretrain", "--cpu", "--model-config", "tiny", "--tokenized-dataset", str(tokens),
                   "--output-dir", str(out), "--max-train-steps", "3", "--train-batch-size", "4",
                   "--warmup-steps", "1", "--checkpointing-steps", "0", "--logging-steps", "1",
                   "--class-conditional", "--verify-replicas", cwd=tmp_path)
    summary = read_summary(out)
    assert summary["num_processes"] == 2 and summary["global_batch_size"] == 8
    saved = state_dict_digest(MageForMaskedImageModeling.from_pretrained(out).state_dict())
    assert summary["replica_weights_sha256"] == [saved, saved]
