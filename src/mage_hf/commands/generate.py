"""`mage-hf generate`: sample (or inpaint) images with a MagePipeline and write PNGs.

    mage-hf generate --class-label 1 --num-images 8 --output samples.png          # the embedded mage-mnist
    mage-hf generate --pipeline mage-vit-b-pipeline --num-images 4 --output-dir out/
    mage-hf generate --class-label 3 --image digit.png --mask mask.png --output inpainted.png
    accelerate launch -m mage_hf generate --pipeline mage-vit-b-pipeline --num-images 50000 --batch-size 64 \
        --dtype bfloat16 --compile --output-dir out/

Image i always uses its own generator seeded `--seed + i` (`mage_hf.sampling`), so its tokens do not depend on
`--batch-size` or on the number of processes (its decoded pixels may differ by float rounding); under `accelerate
launch` every process generates the images i with `i % processes == rank` and writes its own PNGs, and the main
process writes the grid.
"""

import argparse
import math
from pathlib import Path

import PIL.Image
from accelerate import PartialState
from accelerate.utils import gather_object

from ..sampling import image_grid, iter_generated_chunks, shard_indices
from .options import add_sampling_arguments, check_sampling_arguments, load_pipeline, pipeline_call_kwargs, precision_context

DEFAULT_GRID = "samples.png"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--pipeline", help="MagePipeline folder (default: the embedded mage-mnist)")
    parser.add_argument("--class-label", nargs="+", help="class index(es) or name(s); omit for unconditional")
    parser.add_argument("--num-images", type=int, default=8, help="images in all (default 8)")
    parser.add_argument("--image", help="inpainting: input image file")
    parser.add_argument("--mask", help="inpainting: mask file, white = regenerate (same size as --image)")
    parser.add_argument("--output", help=f"grid PNG to write (default {DEFAULT_GRID} unless --output-dir is given)")
    parser.add_argument("--output-dir", help="write one PNG per image (00000.png, ...) into this folder")
    parser.add_argument("--scale", type=int, default=None,
                        help="upscale factor of the written PNGs (nearest; default 256 // image size, at least 1)")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    add_sampling_arguments(parser, "images per pipeline call (default: all of a process's images at once)")


def _labels(values: list[str] | None) -> list[int | str] | None:
    if values is None:
        return None
    return [int(v) if v.lstrip("-").isdigit() else v for v in values]


def _upscale(image: PIL.Image.Image, scale: int) -> PIL.Image.Image:
    return image if scale == 1 else image.resize((image.width * scale, image.height * scale), PIL.Image.NEAREST)


def run(args: argparse.Namespace) -> int:
    check_sampling_arguments(args)
    if args.num_images < 1:
        raise ValueError(f"`--num-images` must be >= 1, got {args.num_images}")
    if (args.image is None) != (args.mask is None):
        raise ValueError("inpainting needs both `--image` and `--mask`")
    state = PartialState(cpu=args.device == "cpu")
    device = state.device if state.num_processes > 1 else args.device
    pipe = load_pipeline(args.pipeline, args, device)
    pipe.set_progress_bar_config(disable=args.no_progress or not state.is_main_process)
    labels = _labels(args.class_label)
    kwargs = pipeline_call_kwargs(args, conditional=labels is not None)
    if labels is not None:
        kwargs["class_labels"] = (labels * math.ceil(args.num_images / len(labels)))[: args.num_images]
    if args.image is not None:
        image, mask = PIL.Image.open(args.image).convert("RGB"), PIL.Image.open(args.mask).convert("L")
        kwargs.update(image=[image] * args.num_images, mask_image=[mask] * args.num_images)
    output = Path(args.output) if args.output else (None if args.output_dir else Path(DEFAULT_GRID))
    folder = Path(args.output_dir) if args.output_dir else None
    if folder is not None:
        folder.mkdir(parents=True, exist_ok=True)

    mine: list[tuple[int, PIL.Image.Image]] = []
    indices = shard_indices(args.num_images, state.process_index, state.num_processes)
    with precision_context(args, device):
        chunks = iter_generated_chunks(pipe, indices, args.batch_size, args.seed, generator_device=device, **kwargs)
        for chunk, images in chunks:
            mine.extend(zip(chunk, images))
    scale = args.scale or max(1, 256 // mine[0][1].width) if mine else 1
    for index, image in mine:
        if folder is not None:
            _upscale(image, scale).save(folder / f"{index:05d}.png")
    everything = sorted(gather_object(mine), key=lambda item: item[0]) if output is not None else []
    if state.is_main_process:
        classes = f", classes {kwargs['class_labels']}" if labels is not None else ""
        if output is not None:
            output.parent.mkdir(parents=True, exist_ok=True)
            _upscale(image_grid([image for _, image in everything]), scale).save(output)
            print(f"wrote {output.resolve()} ({len(everything)} images{classes})")
        if folder is not None:
            print(f"wrote {args.num_images} PNGs to {folder.resolve()}")
    state.wait_for_everyone()
    return 0


__all__ = ["add_arguments", "run"]
