"""`mage-hf convert`: original MAGE / VQGAN checkpoints (github.com/LTH14/mage) -> `save_pretrained` folders.

    mage-hf convert --checkpoint mage-vitb-1600.pth --output-dir mage-vitb
    mage-hf convert --checkpoint mage-vitl-1600.pth --model-size vit-l --output-dir mage-vitl
    mage-hf convert --checkpoint mage-vitb-ft.pth --output-dir mage-vitb-ft          # classifier
    mage-hf convert --vqgan-checkpoint vqgan_jax_strongaug.ckpt --output-dir mage-vqgan

Every size is read from the checkpoint; head counts are not stored there and come from `--model-size` or the head
flags (default: the released ViT-B). Folders are written to a temporary directory, loaded back and run once before
they replace `--output-dir`, so a failure leaves nothing half-written.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .conversion import (
    MODEL_SIZE_HEADS,
    CheckpointError,
    _build_model,
    atomic_output_dir,
    convert_mage_state_dict,
    load_original_state_dict,
    load_original_vqgan,
)

DEFAULT_MODEL_SIZE = "vit-b"  # the released mage-vitb-1600.pth
DEFAULT_VQ_IMAGE_SIZE = 256  # the released VQGAN's training resolution
VERIFY_SEED = 0


class ConversionArgumentError(ValueError):
    """Flags that contradict each other or the checkpoint."""


@dataclass
class Conversion:
    """A converted model in memory: its task ("pretraining", "classification" or "vqgan"), the model, the original
    file(s) and the known-unused original keys that were dropped."""

    task: str
    model: torch.nn.Module
    sources: list[str]
    dropped_keys: list[str] = field(default_factory=list)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--checkpoint", type=Path, metavar="PTH", help="original MAGE pretraining or fine-tuned `.pth`"
    )
    parser.add_argument(
        "--vqgan-checkpoint",
        type=Path,
        metavar="CKPT",
        help="original VQGAN `.ckpt`: alone, converts the tokenizer; with --checkpoint, replaces its `vqgan.*` weights",
    )
    parser.add_argument(
        "--model-size",
        choices=sorted(MODEL_SIZE_HEADS),
        default=None,
        help=f"preset head counts (default {DEFAULT_MODEL_SIZE}): "
        + ", ".join(f"{name}: {enc}/{dec}" for name, (enc, dec) in sorted(MODEL_SIZE_HEADS.items())),
    )
    parser.add_argument(
        "--num-attention-heads", type=int, metavar="N", help="encoder heads (overrides --model-size)"
    )
    parser.add_argument(
        "--decoder-num-attention-heads",
        type=int,
        metavar="N",
        help="decoder heads of a pretraining model (overrides --model-size)",
    )
    parser.add_argument(
        "--image-size",
        type=int,
        metavar="PX",
        help=f"VQGAN-only: image size of the tokenizer (default {DEFAULT_VQ_IMAGE_SIZE})",
    )
    parser.add_argument(
        "--output-dir", type=Path, required=True, metavar="DIR", help="folder to write (must be new or empty)"
    )
    parser.add_argument(
        "--pipeline-dir",
        type=Path,
        metavar="DIR2",
        help="pretraining checkpoints: also write a complete MagePipeline folder (vqvae, transformer, scheduler)",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace non-empty output folders")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")


# ---------------------------------------------------------------------------------------------------- convert


def resolve_heads(args: argparse.Namespace) -> tuple[int, int]:
    """(encoder, decoder) heads: explicit flags win over `--model-size`, which defaults to the released ViT-B."""
    preset = MODEL_SIZE_HEADS[args.model_size or DEFAULT_MODEL_SIZE]
    heads = tuple(
        preset[i] if flag is None else flag
        for i, flag in enumerate((args.num_attention_heads, args.decoder_num_attention_heads))
    )
    for flag, value in zip(("--num-attention-heads", "--decoder-num-attention-heads"), heads):
        if value <= 0:
            raise ConversionArgumentError(f"`{flag}` must be a positive integer, got {value}")
    return heads


def check_heads(state_dict: dict[str, torch.Tensor], heads: tuple[int, int]) -> None:
    """Each head count must divide the width the checkpoint holds (the decoder's only when it has one)."""
    widths = [("--num-attention-heads", "encoder", "token_emb.word_embeddings.weight", 1)]
    if "decoder_embed.weight" in state_dict:
        widths.append(("--decoder-num-attention-heads", "decoder", "decoder_embed.weight", 0))
    for (flag, stack, key, dim), num_heads in zip(widths, heads):
        if key in state_dict and state_dict[key].shape[dim] % num_heads:
            width = state_dict[key].shape[dim]
            raise ConversionArgumentError(
                f"`{flag}` ({num_heads}) must divide the checkpoint's {stack} width ({width}); "
                f"pass --model-size or a head count that divides {width}"
            )


def replace_vqgan(
    state_dict: dict[str, torch.Tensor], vq_state_dict: dict[str, torch.Tensor], vq_path: Path
) -> None:
    """Put the separate VQGAN's weights under `vqgan.*` of a MAGE state dict, in place (same keys and shapes)."""
    current = {key[len("vqgan.") :]: value for key, value in state_dict.items() if key.startswith("vqgan.")}
    if current:
        if set(current) != set(vq_state_dict):
            differ = sorted(set(current) ^ set(vq_state_dict))
            raise CheckpointError(f"`{vq_path}` has other VQGAN keys than the MAGE checkpoint: {differ[:10]}")
        mismatched = [
            f"{key}: {tuple(vq_state_dict[key].shape)} vs {tuple(tensor.shape)}"
            for key, tensor in current.items()
            if vq_state_dict[key].shape != tensor.shape
        ]
        if mismatched:
            raise CheckpointError(
                f"`{vq_path}` does not match the MAGE checkpoint's VQGAN shapes: {mismatched[:10]}"
            )
    state_dict.update({f"vqgan.{key}": value for key, value in vq_state_dict.items()})


def convert(args: argparse.Namespace) -> Conversion:
    """Read the original file(s) named by the flags and build the converted model in memory."""
    if args.checkpoint is None:
        image_size = args.image_size or DEFAULT_VQ_IMAGE_SIZE
        model = load_original_vqgan(args.vqgan_checkpoint, image_size=image_size)
        if image_size % model.downsample_factor:
            raise ConversionArgumentError(
                f"`--image-size` ({image_size}) must be a multiple of the VQGAN's downsampling factor "
                f"({model.downsample_factor})"
            )
        return Conversion("vqgan", model, [args.vqgan_checkpoint.name])

    heads = resolve_heads(args)
    state_dict = load_original_state_dict(args.checkpoint)
    sources = [args.checkpoint.name]
    if args.vqgan_checkpoint is not None:
        replace_vqgan(state_dict, load_original_state_dict(args.vqgan_checkpoint), args.vqgan_checkpoint)
        sources.append(args.vqgan_checkpoint.name)
    check_heads(state_dict, heads)
    converted = convert_mage_state_dict(state_dict, *heads)
    if args.image_size is not None and args.image_size != converted.config.image_size:
        raise ConversionArgumentError(
            f"`--image-size` ({args.image_size}) disagrees with the checkpoint's image size "
            f"({converted.config.image_size}); it only applies to VQGAN-only conversion"
        )
    if args.pipeline_dir is not None and converted.task != "pretraining":
        raise ConversionArgumentError("`--pipeline-dir` needs a pretraining checkpoint, not a fine-tuned classifier")
    return Conversion(converted.task, _build_model(converted), sources, converted.dropped_keys)


def summarize(conversion: Conversion) -> str:
    """What was found: task, sizes and the dropped keys."""
    model = conversion.model
    if conversion.task == "vqgan":
        vq = model.config
        grid = vq.sample_size // model.downsample_factor
        return "\n".join(
            [
                f"task: vqgan (MageVQModel) from {', '.join(conversion.sources)}",
                f"image size {vq.sample_size} px -> {grid}x{grid} = {grid * grid} tokens, "
                + f"codebook {vq.num_vq_embeddings} x {vq.vq_embed_dim}",
                f"channels {list(vq.block_out_channels)}, blocks per level {vq.layers_per_block}",
            ]
        )
    config = model.config
    grid = config.token_grid_size
    lines = [
        f"task: {conversion.task} ({type(model).__name__}) from {' + VQGAN '.join(conversion.sources)}",
        f"image size {config.image_size} px -> {grid}x{grid} = {config.num_image_tokens} tokens, "
        + f"codebook {config.codebook_size} (vocabulary {config.vocab_size}, mask id {config.mask_token_id}, "
        + f"fake class id {config.fake_class_id})",
        f"encoder: width {config.hidden_size}, depth {config.num_hidden_layers}, heads {config.num_attention_heads}",
    ]
    if conversion.task == "classification":
        head = "BatchNorm + linear (linear probe)" if config.use_linear_probe_bn else "linear"
        lines.append(f"classes: {config.num_labels} ({head} head)")
    else:
        lines.append(
            f"decoder: width {config.decoder_hidden_size}, depth {config.decoder_num_hidden_layers}, "
            f"heads {config.decoder_num_attention_heads}"
        )
    vq = config.vq_config
    lines.append(f"VQGAN: channels {vq['block_out_channels']}, blocks per level {vq['layers_per_block']}")
    dropped = ", ".join(conversion.dropped_keys) or "none"
    lines.append(f"dropped {len(conversion.dropped_keys)} known-unused original keys: {dropped}")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------------ write


@torch.no_grad()
def _forward(model: torch.nn.Module, task: str) -> torch.Tensor:
    """One forward pass on a seeded random input at the model's size; returns the main output tensor."""
    generator = torch.Generator().manual_seed(VERIFY_SEED)
    if task == "vqgan":
        size, channels = model.config.sample_size, model.config.in_channels
        return model(torch.rand(1, channels, size, size, generator=generator)).sample
    config = model.config
    pixels = torch.rand(1, config.num_channels, config.image_size, config.image_size, generator=generator)
    if task == "classification":
        return model(pixel_values=pixels).logits
    return model(pixel_values=pixels, generator=generator).logits


def _load_saved(task: str, path: Path) -> torch.nn.Module:
    from .modeling_mage import MageForImageClassification, MageForMaskedImageModeling
    from .modeling_vqgan import MageVQModel

    model_class = {
        "pretraining": MageForMaskedImageModeling,
        "classification": MageForImageClassification,
        "vqgan": MageVQModel,
    }[task]
    return model_class.from_pretrained(path).eval()


def verify_saved(model: torch.nn.Module, folder: Path, task: str) -> str:
    """Load `folder` back with the task's class, check every tensor equals the converted model's, run one forward
    pass on a random input at the model's size. Returns the "verified: ..." line."""
    reloaded = _load_saved(task, folder)
    expected, actual = model.state_dict(), reloaded.state_dict()
    differing = sorted(
        k
        for k in expected.keys() | actual.keys()
        if k not in expected or k not in actual or not torch.equal(expected[k], actual[k])
    )
    if differing:
        raise CheckpointError(f"the saved folder does not hold the converted weights: {differing[:10]}")
    output = _forward(reloaded, task)
    return (
        f"verified: {type(reloaded).__name__} output {tuple(output.shape)} ({len(actual)} tensors identical)"
    )


def write_model_folder(conversion: Conversion, folder: Path, final_path: Path) -> str:
    """Save the model, its image processor config and model card into `folder`, then verify it."""
    from .image_processing_mage import MageImageProcessor
    from .model_card import write_model_card

    model, task = conversion.model, conversion.task
    model.save_pretrained(folder)  # safetensors only (the transformers 5 / diffusers default)
    image_size = model.config.sample_size if task == "vqgan" else model.config.image_size
    MageImageProcessor.for_image_size(image_size).save_pretrained(folder)
    write_model_card(
        folder, kind=task, converted_from=" + ".join(conversion.sources), model_name=final_path.name
    )
    return verify_saved(model, folder, task)


def write_pipeline_folder(conversion: Conversion, folder: Path, final_path: Path) -> str:
    """Save a `MagePipeline` (tokenizer as `vqvae`, the transformer without its copy of it, the scheduler) into
    `folder` with a model card; verify that the saved pipeline generates the same tokens as the in-memory one."""
    from .model_card import write_model_card
    from .pipeline_mage import MagePipeline

    pipeline = MagePipeline.from_masked_image_model(conversion.model)
    pipeline.save_pretrained(folder)
    write_model_card(folder, kind="pipeline", converted_from=" + ".join(conversion.sources), model_name=final_path.name)
    loaded = MagePipeline.from_pretrained(folder)
    tokens = []
    for pipe in (pipeline, loaded):
        pipe.set_progress_bar_config(disable=True)
        generator = torch.Generator().manual_seed(0)
        tokens.append(pipe(num_inference_steps=2, generator=generator, output_type="latent").images)
    if not torch.equal(*tokens):
        raise CheckpointError("the saved pipeline does not reproduce the converted model's generation")
    return f"verified: MagePipeline 2-step generation identical after reload, tokens {tuple(tokens[1].shape)}"


@dataclass
class OutputTarget:
    """A folder to write: its path and the function filling a temporary folder (returns the "verified" line)."""

    path: Path
    write: Callable[[Conversion, Path, Path], str]


def output_targets(args: argparse.Namespace) -> list[OutputTarget]:
    """The folders this run writes: the model folder, and the pipeline folder with `--pipeline-dir`."""
    targets = [OutputTarget(args.output_dir, write_model_folder)]
    if args.pipeline_dir is not None:
        targets.append(OutputTarget(args.pipeline_dir, write_pipeline_folder))
    return targets


def check_output_paths(args: argparse.Namespace) -> None:
    """Refuse taken output paths before any (slow) conversion work."""
    for target in output_targets(args):
        path = target.path
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


def write_outputs(conversion: Conversion, args: argparse.Namespace) -> list[Path]:
    """Write every target folder atomically (temporary folder, verified, then renamed); returns their paths."""
    written = []
    for target in output_targets(args):
        with _quiet_progress_bars(), atomic_output_dir(target.path, overwrite=args.overwrite) as folder:
            verified = target.write(conversion, folder, target.path)
        print(f"wrote {target.path}")
        print(verified)
        written.append(target.path)
    return written


# -------------------------------------------------------------------------------------------------------- run


def validate_args(args: argparse.Namespace) -> None:
    if args.checkpoint is None and args.vqgan_checkpoint is None:
        raise ConversionArgumentError("pass `--checkpoint` (MAGE) and/or `--vqgan-checkpoint` (VQGAN)")
    head_flags = (args.num_attention_heads, args.decoder_num_attention_heads, args.model_size)
    if args.checkpoint is None and any(flag is not None for flag in head_flags):
        raise ConversionArgumentError(
            "head flags and `--model-size` need `--checkpoint` (a VQGAN has no heads)"
        )
    if args.pipeline_dir is not None and args.checkpoint is None:
        raise ConversionArgumentError("`--pipeline-dir` needs a MAGE pretraining `--checkpoint`")
    if args.pipeline_dir is not None and Path(args.pipeline_dir).resolve() == Path(args.output_dir).resolve():
        raise ConversionArgumentError("`--pipeline-dir` must differ from `--output-dir`")
    if args.image_size is not None and args.image_size <= 0:
        raise ConversionArgumentError(f"`--image-size` must be a positive integer, got {args.image_size}")
    check_output_paths(args)


def run(args: argparse.Namespace) -> int:
    """Convert, summarize, write and verify. Returns 0, or 2 (message on stderr) for bad flags or checkpoints."""
    try:
        validate_args(args)
        conversion = convert(args)
        print(summarize(conversion))
        write_outputs(conversion, args)
    except (CheckpointError, ConversionArgumentError, FileExistsError) as error:
        if args.debug:
            raise
        print(f"mage-hf convert: error: {error}", file=sys.stderr)
        return 2
    return 0


def build_parser() -> argparse.ArgumentParser:
    from .cli import COMMANDS

    parser = argparse.ArgumentParser(prog="mage-hf convert", description=COMMANDS["convert"][1])
    add_arguments(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    """`mage-hf convert` as a function (also what `conversion/convert_mage_original.py` runs)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:  # argparse: usage error (2) or --help (0), message already printed
        return int(exit_.code or 0)
    return run(args)


__all__ = [
    "Conversion",
    "ConversionArgumentError",
    "OutputTarget",
    "add_arguments",
    "convert",
    "main",
    "output_targets",
    "run",
    "write_outputs",
]
