"""`mage-hf generate`: sample (or inpaint) images with a MagePipeline and write PNGs.

    mage-hf generate --class-label 1 --num-images 8 --output samples.png          # the embedded mage-mnist
    mage-hf generate --pipeline mage-vit-b-pipeline --num-images 4 --output-dir out/
    mage-hf generate --class-label 3 --image digit.png --mask mask.png --output inpainted.png
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import PIL.Image
import torch


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--pipeline", help="MagePipeline folder (default: the embedded mage-mnist)")
    parser.add_argument("--class-label", nargs="+", help="class index(es) or name(s); omit for unconditional")
    parser.add_argument("--num-images", type=int, default=8, help="images in all (default 8)")
    parser.add_argument("--num-inference-steps", "--steps", type=int, default=12)
    parser.add_argument("--guidance-scale", type=float, default=None,
                        help="classifier-free guidance (default: 2.0 for class-conditional models, else 1)")
    parser.add_argument("--guidance-schedule", choices=("constant", "linear"), default="constant")
    parser.add_argument("--choice-temperature", type=float, help="re-masking temperature (scheduler default)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--image", help="inpainting: input image file")
    parser.add_argument("--mask", help="inpainting: mask file, white = regenerate (same size as --image)")
    parser.add_argument("--output", default="samples.png", help="grid PNG to write (default samples.png)")
    parser.add_argument("--output-dir", help="also write one PNG per image into this folder")
    parser.add_argument("--scale", type=int, default=None, help="upscale factor of the written PNGs (nearest)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def _labels(values: list[str] | None) -> list[int | str] | None:
    if values is None:
        return None
    return [int(v) if v.lstrip("-").isdigit() else v for v in values]


def make_grid(images: list[PIL.Image.Image], columns: int | None = None) -> PIL.Image.Image:
    """Tile same-size images in rows of `columns` (default: about square)."""
    columns = columns or math.ceil(math.sqrt(len(images)))
    rows = math.ceil(len(images) / columns)
    width, height = images[0].size
    grid = PIL.Image.new("RGB", (columns * width, rows * height))
    for index, image in enumerate(images):
        grid.paste(image, ((index % columns) * width, (index // columns) * height))
    return grid


def _upscale(image: PIL.Image.Image, scale: int) -> PIL.Image.Image:
    return image if scale == 1 else image.resize((image.width * scale, image.height * scale), PIL.Image.NEAREST)


def run(args: argparse.Namespace) -> int:
    from .default_model import DEFAULT_PIPELINE
    from .pipeline_mage import MagePipeline

    if args.num_images < 1:
        raise SystemExit("error: `--num-images` must be >= 1")
    if (args.image is None) != (args.mask is None):
        raise SystemExit("error: inpainting needs both `--image` and `--mask`")
    pipe = MagePipeline.from_pretrained(args.pipeline or DEFAULT_PIPELINE).to(args.device)
    pipe.set_progress_bar_config(disable=args.no_progress)
    conditional = pipe.transformer.config.num_condition_classes > 0
    labels = _labels(args.class_label)
    kwargs = {}
    if labels is not None:
        repeats = math.ceil(args.num_images / len(labels))
        kwargs["class_label"] = (labels * repeats)[: args.num_images]
        kwargs["guidance_scale"] = 2.0 if args.guidance_scale is None else args.guidance_scale
    else:
        kwargs["batch_size"] = args.num_images
        if args.guidance_scale not in (None, 1.0):
            raise SystemExit("error: `--guidance-scale` needs `--class-label`")
    if args.image is not None:
        image, mask = PIL.Image.open(args.image).convert("RGB"), PIL.Image.open(args.mask).convert("L")
        kwargs.update(image=[image] * args.num_images, mask_image=[mask] * args.num_images)
        kwargs.pop("batch_size", None)
    generators = [torch.Generator().manual_seed(args.seed + i) for i in range(args.num_images)]
    try:
        images = pipe(
            num_inference_steps=args.num_inference_steps, guidance_schedule=args.guidance_schedule,
            choice_temperature=args.choice_temperature, generator=generators, **kwargs,
        ).images
    except (ValueError, TypeError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    scale = args.scale or max(1, 256 // images[0].width)
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    _upscale(make_grid(images), scale).save(output)
    print(f"wrote {output.resolve()} ({len(images)} images"
          + (f", classes {kwargs['class_label']}" if conditional and labels is not None else "") + ")")
    if args.output_dir:
        folder = Path(args.output_dir)
        folder.mkdir(parents=True, exist_ok=True)
        for index, image in enumerate(images):
            _upscale(image, scale).save(folder / f"{index:05d}.png")
        print(f"wrote {len(images)} PNGs to {folder.resolve()}")
    return 0


__all__ = ["add_arguments", "make_grid", "run"]
