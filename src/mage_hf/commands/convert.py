"""`mage-hf convert`: original MAGE / VQGAN checkpoints (github.com/LTH14/mage) -> `save_pretrained` folders.

    mage-hf convert --checkpoint mage-vitb-1600.pth --output-dir mage-vitb
    mage-hf convert --checkpoint mage-vitl-1600.pth --model-size vit-l --output-dir mage-vitl
    mage-hf convert --checkpoint mage-vitb-ft.pth --output-dir mage-vitb-ft          # classifier
    mage-hf convert --vqgan-checkpoint vqgan_jax_strongaug.ckpt --output-dir mage-vqgan

Every size is read from the checkpoint; head counts are not stored there and come from `--model-size` or the head
flags (default: the released ViT-B). Folders are written to a temporary directory, loaded back and run once before
they replace `--output-dir`, so a failure leaves nothing half-written (`mage_hf.conversion` does the work).
"""

import argparse
import contextlib
from collections.abc import Iterator
from pathlib import Path

from ..atomic_files import atomic_directory
from ..conversion import (
    DEFAULT_VQ_IMAGE_SIZE,
    MODEL_SIZE_HEADS,
    convert_checkpoints,
    summarize,
    write_model_folder,
    write_pipeline_folder,
)

DEFAULT_MODEL_SIZE = "vit-b"  # the released mage-vitb-1600.pth


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", type=Path, metavar="PTH", help="original MAGE pretraining or fine-tuned `.pth`")
    parser.add_argument(
        "--vqgan-checkpoint", type=Path, metavar="CKPT",
        help="original VQGAN `.ckpt`: alone, converts the tokenizer; with --checkpoint, replaces its `vqgan.*` weights",
    )
    parser.add_argument(
        "--model-size", choices=sorted(MODEL_SIZE_HEADS), default=None,
        help=f"preset head counts (default {DEFAULT_MODEL_SIZE}): "
        + ", ".join(f"{name}: {enc}/{dec}" for name, (enc, dec) in sorted(MODEL_SIZE_HEADS.items())),
    )
    parser.add_argument("--num-attention-heads", type=int, metavar="N", help="encoder heads (overrides --model-size)")
    parser.add_argument("--decoder-num-attention-heads", type=int, metavar="N",
                        help="decoder heads of a pretraining model (overrides --model-size)")
    parser.add_argument("--image-size", type=int, metavar="PX",
                        help=f"VQGAN-only: image size of the tokenizer (default {DEFAULT_VQ_IMAGE_SIZE})")
    parser.add_argument("--output-dir", type=Path, required=True, metavar="DIR",
                        help="folder to write (must be new or empty)")
    parser.add_argument("--pipeline-dir", type=Path, metavar="DIR2",
                        help="pretraining checkpoints: also write a complete MagePipeline folder (vqvae, transformer, "
                             "scheduler)")
    parser.add_argument("--overwrite", action="store_true", help="replace non-empty output folders")


def resolve_heads(args: argparse.Namespace) -> tuple[int, int]:
    """(encoder, decoder) heads: explicit flags win over `--model-size`, which defaults to the released ViT-B."""
    preset = MODEL_SIZE_HEADS[args.model_size or DEFAULT_MODEL_SIZE]
    heads = tuple(
        preset[i] if flag is None else flag
        for i, flag in enumerate((args.num_attention_heads, args.decoder_num_attention_heads))
    )
    for flag, value in zip(("--num-attention-heads", "--decoder-num-attention-heads"), heads):
        if value <= 0:
            raise ValueError(f"`{flag}` must be a positive integer, got {value}")
    return heads


def output_targets(args: argparse.Namespace) -> list[tuple[Path, object]]:
    """(folder, writer) pairs: the model folder, and the pipeline folder with `--pipeline-dir`."""
    targets = [(args.output_dir, write_model_folder)]
    if args.pipeline_dir is not None:
        targets.append((args.pipeline_dir, write_pipeline_folder))
    return targets


def validate_args(args: argparse.Namespace) -> None:
    """Contradictory flags and taken output paths, refused before any (slow) conversion work."""
    if args.checkpoint is None and args.vqgan_checkpoint is None:
        raise ValueError("pass `--checkpoint` (MAGE) and/or `--vqgan-checkpoint` (VQGAN)")
    head_flags = (args.num_attention_heads, args.decoder_num_attention_heads, args.model_size)
    if args.checkpoint is None and any(flag is not None for flag in head_flags):
        raise ValueError("head flags and `--model-size` need `--checkpoint` (a VQGAN has no heads)")
    if args.pipeline_dir is not None and args.checkpoint is None:
        raise ValueError("`--pipeline-dir` needs a MAGE pretraining `--checkpoint`")
    if args.pipeline_dir is not None and Path(args.pipeline_dir).resolve() == Path(args.output_dir).resolve():
        raise ValueError("`--pipeline-dir` must differ from `--output-dir`")
    if args.image_size is not None and args.image_size <= 0:
        raise ValueError(f"`--image-size` must be a positive integer, got {args.image_size}")
    for path, _ in output_targets(args):
        if path.exists() and not path.is_dir():
            raise FileExistsError(f"output path `{path}` exists and is not a directory")
        if path.is_dir() and any(path.iterdir()) and not args.overwrite:
            raise FileExistsError(f"output directory `{path}` exists and is not empty (pass --overwrite)")


@contextlib.contextmanager
def _quiet_progress_bars() -> Iterator[None]:
    """No per-shard / per-weight progress bars while saving and reloading (restored afterwards)."""
    from transformers.utils import logging as transformers_logging

    enabled = transformers_logging.is_progress_bar_enabled()
    transformers_logging.disable_progress_bar()
    try:
        yield
    finally:
        if enabled:
            transformers_logging.enable_progress_bar()


def run(args: argparse.Namespace) -> int:
    """Convert, summarize, write and verify every output folder."""
    validate_args(args)
    heads = resolve_heads(args) if args.checkpoint is not None else MODEL_SIZE_HEADS[DEFAULT_MODEL_SIZE]
    conversion = convert_checkpoints(args.checkpoint, args.vqgan_checkpoint, heads, args.image_size)
    if args.pipeline_dir is not None and conversion.task != "pretraining":
        raise ValueError("`--pipeline-dir` needs a pretraining checkpoint, not a fine-tuned classifier")
    print(summarize(conversion))
    for path, write in output_targets(args):
        with _quiet_progress_bars(), atomic_directory(path, overwrite=args.overwrite) as folder:
            verified = write(conversion, folder, path)
        print(f"wrote {path}")
        print(verified)
    return 0


__all__ = ["add_arguments", "resolve_heads", "run", "validate_args"]
