"""`mage-hf convert` end to end: golden checkpoints -> folders that reproduce the original code, other shapes via
original-layout checkpoints, both entry points, and failures that leave nothing behind."""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import REPO_ROOT, assert_close
from huggingface_hub import ModelCard
from original_layout import to_original_layout
from safetensors.torch import load_file
from transformers import AutoImageProcessor, AutoModel, AutoModelForImageClassification

from mage_hf import (
    MageConfig,
    MageForImageClassification,
    MageForMaskedImageModeling,
    MageImageProcessor,
    MageModel,
    MageVQModel,
)
from mage_hf.commands import main

WEIGHT_SUFFIXES = {".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".h5", ".msgpack"}


def _convert(*args) -> tuple[int, str, str]:
    """Run `mage-hf convert` in process; returns (exit code, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(["convert", *[str(arg) for arg in args]])
    return code, out.getvalue(), err.getvalue()


def _head_flags(golden) -> list[str]:
    return [
        "--num-attention-heads",
        str(golden.num_heads),
        "--decoder-num-attention-heads",
        str(golden.decoder_num_heads),
    ]


def _masks(golden) -> tuple[torch.Tensor, torch.Tensor]:
    """The golden (B, N) masked and dropped image-token masks (position 0 of the stored masks is the class slot)."""
    masked = golden.tensors["mim_token_all_mask"][:, 1:].bool()
    return masked, golden.tensors["mim_token_drop_mask"][:, 1:].bool()


def _assert_only_safetensors(folder: Path) -> None:
    weights = [p.name for p in folder.iterdir() if p.suffix in WEIGHT_SUFFIXES]
    assert weights and all(name.endswith(".safetensors") for name in weights), weights


def _leftovers(parent: Path, name: str) -> list[str]:
    """Temporary folders `atomic_directory` may have left beside `parent / name`."""
    return [p.name for p in parent.iterdir() if p.name.startswith(f".{name}.")]


@pytest.fixture(scope="module")
def pretraining_dir(golden, tmp_path_factory) -> tuple[Path, str]:
    out = tmp_path_factory.mktemp("convert") / "mage-pretraining"
    code, stdout, stderr = _convert(
        "--checkpoint", golden.pretraining_checkpoint, *_head_flags(golden), "--output-dir", out
    )
    assert code == 0, stderr
    return out, stdout


@pytest.fixture(scope="module")
def classifier_dir(golden, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("convert") / "mage-classifier"
    code, _, stderr = _convert(
        "--checkpoint", golden.finetuned_checkpoint, *_head_flags(golden), "--output-dir", out
    )
    assert code == 0, stderr
    return out


# ----------------------------------------------------------------------------------------- golden checkpoints


def test_pretraining_summary_and_files(golden, pretraining_dir):
    out, stdout = pretraining_dir
    config = MageConfig.from_pretrained(out)
    assert "task: pretraining" in stdout
    assert f"codebook {golden.codebook_size}" in stdout and f"heads {golden.num_heads}" in stdout
    for key in (
        "cls_token",
        "pos_embed",
        "mask_token",
        "decoder_pos_embed",
        "decoder_pred.weight",
        "patch_embed.proj.weight",
    ):
        assert key in stdout.split("known-unused original keys:")[1]
    assert (
        f"verified: MageForMaskedImageModeling output (1, {1 + config.num_image_tokens}, {config.vocab_size})"
        in stdout
    )
    assert {p.name for p in out.iterdir()} == {
        "config.json",
        "model.safetensors",
        "preprocessor_config.json",
        "README.md",
    }
    _assert_only_safetensors(out)
    card = ModelCard.load(out / "README.md")
    assert card.data.license == "mit" and card.data.library_name == "mage_hf"
    assert card.data.pipeline_tag == "image-feature-extraction" and "mage" in card.data.tags
    assert golden.pretraining_checkpoint.name in card.text and "github.com/LTH14/mage" in card.text
    assert "@inproceedings{li2023mage" in card.text
    assert _leftovers(out.parent, out.name) == []


@torch.no_grad()
def test_pretraining_folder_reproduces_golden(golden, pretraining_dir):
    out, _ = pretraining_dir
    model = MageForMaskedImageModeling.from_pretrained(out).eval()
    masked, dropped = _masks(golden)
    logits = model(
        pixel_values=golden.tensors["images"], bool_masked_pos=masked, bool_dropped_pos=dropped
    ).logits
    assert_close(logits, golden.tensors["mim_logits"], name="mim_logits")
    codebook = golden.codebook_size
    for step, ids in enumerate(golden.tensors["gen_step_input_ids"]):
        step_logits = model(input_ids=ids).logits[:, 1:, :codebook]
        assert_close(step_logits, golden.tensors["gen_step_logits"][step], name=f"gen_step_logits[{step}]")

    vq = model.mage.vqgan
    assert torch.equal(vq.tokenize(golden.tensors["images"]), golden.tensors["vq_indices"])
    assert_close(vq.encode(golden.tensors["images"]).latents, golden.tensors["vq_z"], name="vq_z")
    assert_close(
        vq.decode(golden.tensors["vq_z_q"], force_not_quantize=True).sample,
        golden.tensors["vq_decoded"],
        name="vq_decoded",
    )
    assert_close(
        vq.decode_indices(golden.tensors["vq_indices"]),
        golden.tensors["vq_decoded_from_indices"],
        name="vq_decoded_from_indices",
    )

    encoder = AutoModel.from_pretrained(out).eval()
    assert type(encoder) is MageModel
    features = encoder(pixel_values=golden.tensors["images"]).last_hidden_state
    assert_close(features, golden.tensors["enc_last_hidden_state"], name="enc_last_hidden_state")

    processor = AutoImageProcessor.from_pretrained(out)
    assert isinstance(processor, MageImageProcessor)
    size = golden.meta["img_size"]
    pixels = processor(torch.rand(3, 2 * size, 3 * size), return_tensors="pt").pixel_values
    assert tuple(pixels.shape) == (1, 3, size, size)


def test_model_card_snippet_runs(golden, pretraining_dir, monkeypatch):
    """The card's "How to use" code runs as written (from the folder's parent, with an image.jpg there)."""
    from PIL import Image

    out, _ = pretraining_dir
    text = (out / "README.md").read_text()
    code = text.split("```python\n", 1)[1].split("```", 1)[0]
    monkeypatch.chdir(out.parent)
    Image.new("RGB", (48, 40), (200, 30, 90)).save("image.jpg")
    namespace = {}
    exec(compile(code, "README.md", "exec"), namespace)  # noqa: S102 (our own generated card)
    config = namespace["model"].config
    assert tuple(namespace["features"].shape) == (1, config.hidden_size)


@torch.no_grad()
def test_classifier_folder_reproduces_golden(golden, classifier_dir):
    model = AutoModelForImageClassification.from_pretrained(classifier_dir).eval()
    assert type(model) is MageForImageClassification
    assert model.config.num_labels == golden.meta["num_classes"]
    out = model(pixel_values=golden.tensors["images"])
    assert_close(out.logits, golden.tensors["clf_logits"], name="clf_logits")
    assert_close(out.pooler_output, golden.tensors["clf_pooled_features"], name="clf_pooled_features")
    _assert_only_safetensors(classifier_dir)
    assert ModelCard.load(classifier_dir / "README.md").data.pipeline_tag == "image-classification"
    assert isinstance(AutoImageProcessor.from_pretrained(classifier_dir), MageImageProcessor)


@torch.no_grad()
def test_vqgan_only_folder_reproduces_golden(golden, tmp_path):
    out = tmp_path / "vqgan"
    size = golden.meta["img_size"]
    code, stdout, stderr = _convert(
        "--vqgan-checkpoint", golden.vqgan_checkpoint, "--image-size", size, "--output-dir", out
    )
    assert code == 0, stderr
    assert "task: vqgan" in stdout and f"verified: MageVQModel output (1, 3, {size}, {size})" in stdout
    vq = MageVQModel.from_pretrained(out).eval()
    assert vq.config.sample_size == size and vq.config.num_vq_embeddings == golden.codebook_size
    assert torch.equal(vq.tokenize(golden.tensors["images"]), golden.tensors["vq_indices"])
    assert_close(
        vq.decode_indices(golden.tensors["vq_indices"]),
        golden.tensors["vq_decoded_from_indices"],
        name="vq_decoded_from_indices",
    )
    _assert_only_safetensors(out)
    assert "vqgan" in ModelCard.load(out / "README.md").data.tags


@torch.no_grad()
def test_separate_vqgan_replaces_the_embedded_one(golden, tmp_path):
    from mage_hf.conversion import load_original_state_dict

    vq_state = load_original_state_dict(golden.vqgan_checkpoint)
    vq_state["quantize.embedding.weight"] = vq_state["quantize.embedding.weight"] + 1.0
    vq_path = tmp_path / "vqgan_modified.ckpt"
    torch.save({"state_dict": vq_state}, vq_path)
    out = tmp_path / "out"
    code, _, stderr = _convert(
        "--checkpoint",
        golden.pretraining_checkpoint,
        "--vqgan-checkpoint",
        vq_path,
        *_head_flags(golden),
        "--output-dir",
        out,
    )
    assert code == 0, stderr
    model = MageForMaskedImageModeling.from_pretrained(out)
    assert torch.equal(model.mage.vqgan.quantizer.embedding.weight, vq_state["quantize.embedding.weight"])

    vq_state["quantize.embedding.weight"] = vq_state["quantize.embedding.weight"][
        :, :-1
    ]  # other codebook width
    torch.save({"state_dict": vq_state}, vq_path)
    bad_out = tmp_path / "bad"
    code, _, stderr = _convert(
        "--checkpoint",
        golden.pretraining_checkpoint,
        "--vqgan-checkpoint",
        vq_path,
        *_head_flags(golden),
        "--output-dir",
        bad_out,
    )
    assert code == 2 and "quantize.embedding.weight" in stderr and not bad_out.exists()


@torch.no_grad()
def test_save_load_round_trip(golden, pretraining_dir, tmp_path):
    out, _ = pretraining_dir
    model = MageForMaskedImageModeling.from_pretrained(out).eval()
    model.save_pretrained(tmp_path / "again")
    again = MageForMaskedImageModeling.from_pretrained(tmp_path / "again").eval()
    masked, dropped = _masks(golden)
    inputs = {
        "pixel_values": golden.tensors["images"],
        "bool_masked_pos": masked,
        "bool_dropped_pos": dropped,
    }
    assert torch.equal(model(**inputs).logits, again(**inputs).logits)


def test_both_entry_points(golden, pretraining_dir, tmp_path):
    """`python conversion/convert_mage_original.py` and `python -m mage_hf convert` write the same weights."""
    reference = load_file(pretraining_dir[0] / "model.safetensors")
    commands = {
        "script": [sys.executable, str(REPO_ROOT / "conversion" / "convert_mage_original.py")],
        "module": [sys.executable, "-m", "mage_hf", "convert"],
    }
    args = ["--checkpoint", str(golden.pretraining_checkpoint), *_head_flags(golden)]
    # Both at once: each run is mostly interpreter start-up and imports.
    runs = {
        name: subprocess.Popen(
            command + args + ["--output-dir", str(tmp_path / name)],
            cwd=REPO_ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for name, command in commands.items()
    }
    for name, process in runs.items():
        stdout, stderr = process.communicate(timeout=300)
        assert process.returncode == 0, f"{name}: {stderr}"
        assert "verified: MageForMaskedImageModeling" in stdout
        weights = load_file(tmp_path / name / "model.safetensors")
        assert weights.keys() == reference.keys() and all(
            torch.equal(weights[k], reference[k]) for k in weights
        )


# ------------------------------------------------------------------------------ other shapes, original layout


def _perturbed(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Random norm weights and biases too (initialised to constants), so a swapped mapping shows in the outputs."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for tensor in list(model.parameters()) + list(model.buffers()):
            if tensor.is_floating_point() and tensor.ndim <= 1:
                tensor.add_(0.05 * torch.randn(tensor.shape, generator=generator))
    return model.eval()


# Unlike the golden set: 64 px with 3 VQ levels (16x16 tokens), codebook 128, width 96 with 6 heads.
OTHER_SHAPE = {
    "image_size": 64,
    "codebook_size": 128,
    "hidden_size": 96,
    "num_hidden_layers": 2,
    "num_attention_heads": 6,
    "decoder_hidden_size": 64,
    "decoder_num_hidden_layers": 1,
    "decoder_num_attention_heads": 8,
    "vq_config": {
        "block_out_channels": [32, 32, 64],
        "layers_per_block": 1,
        "latent_channels": 32,
        "vq_embed_dim": 32,
    },
}


@torch.no_grad()
def _check_other_shape(model, tmp_path, head_flags: list[str], batch: int = 2) -> None:
    """Save `model` in the original layout, convert it with the CLI, compare outputs bit for bit."""
    checkpoint = tmp_path / "original.pth"
    torch.save({"model": to_original_layout(model)}, checkpoint)
    out = tmp_path / "converted"
    code, _, stderr = _convert("--checkpoint", checkpoint, *head_flags, "--output-dir", out)
    assert code == 0, stderr
    config = model.config
    pixels = torch.rand(
        batch,
        config.num_channels,
        config.image_size,
        config.image_size,
        generator=torch.Generator().manual_seed(1),
    )
    if isinstance(model, MageForImageClassification):
        converted = AutoModelForImageClassification.from_pretrained(out).eval()
        assert torch.equal(converted(pixel_values=pixels).logits, model(pixel_values=pixels).logits)
        return
    converted = MageForMaskedImageModeling.from_pretrained(out).eval()
    for name in (
        "image_size",
        "codebook_size",
        "vocab_size",
        "hidden_size",
        "num_hidden_layers",
        "num_attention_heads",
        "decoder_hidden_size",
        "decoder_num_hidden_layers",
        "decoder_num_attention_heads",
        "mlp_ratio",
    ):
        assert getattr(converted.config, name) == getattr(config, name), name
    vq_configs = [
        {k: v for k, v in m.mage.vqgan.config.items() if not k.startswith("_")} for m in (converted, model)
    ]
    assert vq_configs[0] == vq_configs[1]
    masked, dropped = model.sample_masks(batch, torch.Generator().manual_seed(2))
    inputs = {"pixel_values": pixels, "bool_masked_pos": masked, "bool_dropped_pos": dropped}
    assert torch.equal(converted(**inputs).logits, model(**inputs).logits)


def test_other_shape_pretraining_round_trips_through_original_layout(tmp_path):
    config = MageConfig(**OTHER_SHAPE)
    model = _perturbed(MageForMaskedImageModeling(config))
    heads = [
        "--num-attention-heads",
        str(config.num_attention_heads),
        "--decoder-num-attention-heads",
        str(config.decoder_num_attention_heads),
    ]
    _check_other_shape(model, tmp_path, heads)


def test_other_shape_linear_probe_classifier(tmp_path):
    """`head.0` (BatchNorm, affine=False) + `head.1` of the original linear probe."""
    config = MageConfig(**OTHER_SHAPE, num_labels=7, use_linear_probe_bn=True)
    model = _perturbed(MageForImageClassification(config))
    model.head_norm.running_var.abs_().add_(0.5)
    _check_other_shape(model, tmp_path, ["--num-attention-heads", str(config.num_attention_heads)])


def _total_ram_gb() -> float:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30


@pytest.mark.slow
@pytest.mark.skipif(_total_ram_gb() < 8, reason="needs 8 GB of RAM (a ViT-B MAGE held three times)")
def test_released_vit_b_shapes_with_default_flags(tmp_path):
    """The released ViT-B shapes (256 px, codebook 1024, 12/16 heads), converted with the default head flags."""
    model = _perturbed(MageForMaskedImageModeling(MageConfig()))
    _check_other_shape(model, tmp_path, head_flags=[], batch=1)


# --------------------------------------------------------------------------------------------------- failures


class _PickleBomb:
    """Unpickling it creates `marker` (what a malicious checkpoint would do with a shell command)."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


def _pickle_bomb(path: Path, marker: Path) -> None:
    torch.save({"model": {"weight": torch.zeros(1), "payload": _PickleBomb(marker)}}, path)


def _original_state(golden) -> dict[str, torch.Tensor]:
    return torch.load(golden.pretraining_checkpoint, weights_only=True)["model"]


def _truncated(golden, path: Path) -> None:
    data = golden.pretraining_checkpoint.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _with_state(golden, path: Path, edit) -> None:
    state = _original_state(golden)
    edit(state)
    torch.save({"model": state}, path)


FAILURES = {
    "pickle-bomb": (lambda golden, path: _pickle_bomb(path, path.parent / "pwned"), [], "refusing to load"),
    "truncated": (_truncated, [], "not a readable PyTorch checkpoint"),
    "corrupt": (
        lambda golden, path: path.write_bytes(b"not a checkpoint at all" * 100),
        [],
        "not a readable",
    ),
    "unknown-key": (
        lambda g, p: _with_state(g, p, lambda s: s.update({"blocks.0.attn.rel_pos.weight": torch.zeros(2)})),
        [],
        "blocks.0.attn.rel_pos.weight",
    ),
    "missing-key": (
        lambda g, p: _with_state(g, p, lambda s: s.pop("decoder_norm.weight")),
        [],
        "decoder_norm",
    ),
    "missing-sizing-key": (
        lambda g, p: _with_state(g, p, lambda s: s.pop("blocks.0.mlp.fc1.weight")),
        [],
        "blocks.0.mlp.fc1.weight",
    ),
    "encoder-heads": (
        lambda g, p: _with_state(g, p, lambda s: None),
        lambda g: ["--num-attention-heads", str(g.meta["mage_kwargs"]["embed_dim"] + 1)],
        "--num-attention-heads",
    ),
    "decoder-heads": (
        lambda g, p: _with_state(g, p, lambda s: None),
        lambda g: ["--decoder-num-attention-heads", str(g.meta["mage_kwargs"]["decoder_embed_dim"] + 1)],
        "--decoder-num-attention-heads",
    ),
}


@pytest.mark.parametrize("case", sorted(FAILURES))
def test_bad_checkpoints_fail_cleanly(golden, tmp_path, case):
    make, extra_flags, message = FAILURES[case]
    checkpoint = tmp_path / "bad.pth"
    make(golden, checkpoint)
    flags = _head_flags(golden) + (extra_flags(golden) if callable(extra_flags) else extra_flags)
    out = tmp_path / "out"
    code, stdout, stderr = _convert("--checkpoint", checkpoint, *flags, "--output-dir", out)
    assert code == 2, stdout
    assert message in stderr and "Traceback" not in stderr
    assert not out.exists() and _leftovers(tmp_path, "out") == []
    if case == "pickle-bomb":
        assert not (tmp_path / "pwned").exists()
        # The bomb is real: a plain (unsafe) load runs it.
        torch.load(checkpoint, weights_only=False)
        assert (tmp_path / "pwned").exists()


def test_debug_flag_shows_the_exception(golden, tmp_path):
    checkpoint = tmp_path / "bad.pth"
    checkpoint.write_bytes(b"garbage")
    from mage_hf.conversion import CheckpointError

    with pytest.raises(CheckpointError):
        _convert("--checkpoint", checkpoint, "--output-dir", tmp_path / "out", "--debug")


def test_non_empty_output_dir_needs_overwrite(golden, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    args = ["--checkpoint", golden.pretraining_checkpoint, *_head_flags(golden), "--output-dir", out]
    code, _, stderr = _convert(*args)
    assert code == 2 and "--overwrite" in stderr
    assert [p.name for p in out.iterdir()] == ["keep.txt"] and _leftovers(tmp_path, "out") == []
    code, _, stderr = _convert(*args, "--overwrite")
    assert code == 0, stderr
    assert not (out / "keep.txt").exists() and (out / "model.safetensors").is_file()
    assert _leftovers(tmp_path, "out") == []


@pytest.mark.parametrize(
    "flags, message",
    [
        ([], "--checkpoint"),  # nothing to convert
        (["--vqgan-checkpoint", "x.ckpt", "--num-attention-heads", "4"], "need `--checkpoint`"),
        (["--checkpoint", "x.pth", "--model-size", "vit-h"], "invalid choice"),
        (["--checkpoint", "x.pth", "--num-attention-heads", "0"], "--num-attention-heads"),
        (["--checkpoint", "does-not-exist.pth"], "does not exist"),
    ],
)
def test_bad_flags_exit_2(tmp_path, flags, message):
    code, _, stderr = _convert(*flags, "--output-dir", tmp_path / "out")
    assert code == 2 and message in stderr and not (tmp_path / "out").exists()


# ----------------------------------------------------------------------------------------------- pipeline dir


def test_pipeline_dir_reproduces_original_generation_steps(golden, tmp_path):
    """`--pipeline-dir` writes a MagePipeline whose network calls match the original's generation steps."""
    from mage_hf import MagePipeline

    model_dir, pipeline_dir = tmp_path / "model", tmp_path / "pipeline"
    code, stdout, stderr = _convert(
        "--checkpoint", golden.pretraining_checkpoint, *_head_flags(golden),
        "--output-dir", model_dir, "--pipeline-dir", pipeline_dir,
    )
    assert code == 0, stderr
    assert "MagePipeline 2-step generation identical" in stdout
    assert (pipeline_dir / "model_index.json").is_file() and (pipeline_dir / "README.md").is_file()
    assert not any(p.suffix in (".bin", ".pth", ".pt") for p in pipeline_dir.rglob("*"))
    pipe = MagePipeline.from_pretrained(pipeline_dir)
    assert pipe.transformer.mage.vqgan is None
    with torch.no_grad():
        for step, ids in enumerate(golden.tensors["gen_step_input_ids"]):
            logits = pipe.predict_logits(ids[:, 1:], ids[:, 0])
            assert (logits - golden.tensors["gen_step_logits"][step]).abs().max() <= 1e-4
        images = pipe.decode_tokens(golden.tensors["gen_final_ids"], "pt")
    assert (images - golden.tensors["gen_images"].clamp(0, 1)).abs().max() <= 1e-4


def test_pipeline_dir_refuses_classifier_checkpoints(golden, tmp_path):
    code, _, stderr = _convert(
        "--checkpoint", golden.finetuned_checkpoint, *_head_flags(golden),
        "--output-dir", tmp_path / "model", "--pipeline-dir", tmp_path / "pipeline",
    )
    assert code == 2 and "--pipeline-dir" in stderr
    assert not (tmp_path / "model").exists() and not (tmp_path / "pipeline").exists()
