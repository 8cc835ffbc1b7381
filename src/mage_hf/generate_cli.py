"""`mage-hf generate`: sample (or inpaint) images with a MagePipeline and write PNGs.

    mage-hf generate --class-label 1 --num-images 8 --output samples.png          # the embedded mage-mnist
    mage-hf generate --pipeline mage-vit-b-pipeline --num-images 4 --output-dir out/
    mage-hf generate --class-label 3 --image digit.png --mask mask.png --output inpainted.png
    mage-hf generate --pipeline mage-vit-b-pipeline --num-images 1000 --batch-size 64 --dtype bfloat16 \
        --device cuda --compile --output-dir out/

Image i always uses the seed `--seed + i`, with its own generator, so the images do not depend on
`--batch-size` (the number of images per pipeline call) or on where a run is split.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import sys
from pathlib import Path

import numpy as np
import PIL.Image
import torch

DTYPES = ("float32", "bfloat16", "float16")


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
    parser.add_argument("--batch-size", type=int, default=None,
                        help="images per pipeline call (default: all at once); lower it to fit memory")
    parser.add_argument("--dtype", choices=DTYPES, default="float32",
                        help="load the pipeline's weights in this dtype (default float32)")
    parser.add_argument("--autocast", choices=("bfloat16", "float16"), default=None,
                        help="run the pipeline under torch.autocast in this dtype (weights stay as --dtype)")
    parser.add_argument("--compile", action="store_true",
                        help="torch.compile the decoding step (the first batch, and a smaller last one, compile)")
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


def load_kwargs(dtype: torch.dtype) -> dict:
    """`from_pretrained` keyword for the weights' dtype: `dtype` (diffusers >= 0.42) or `torch_dtype`."""
    import diffusers.utils

    return {"dtype" if hasattr(diffusers.utils, "_resolve_dtype") else "torch_dtype": dtype}


def chunks(count: int, batch_size: int | None) -> list[range]:
    """Index ranges of `count` items in consecutive chunks of at most `batch_size` (all at once if None)."""
    size = count if batch_size is None else batch_size
    return [range(start, min(start + size, count)) for start in range(0, count, size)]


def iter_generated_chunks(pipe, num_images: int, batch_size: int | None, seed: int, class_labels=None,
                          image=None, mask_image=None, generator_device: str | torch.device = "cpu",
                          output_type: str = "pil", **call_kwargs):
    """Yield the `.images` of pipeline calls of at most `batch_size` images each, `num_images` in all.

    Image i is generated with `torch.Generator(generator_device).manual_seed(seed + i)` (per-sample generators),
    so its tokens do not depend on `batch_size` (decoded pixels may differ by float rounding: the VQGAN's convs
    can pick other kernels for another batch size). `class_labels`, `image` and `mask_image` are lists of
    `num_images` entries (or None); other keyword arguments go to every pipeline call.
    """
    for index in chunks(num_images, batch_size):
        kwargs = dict(call_kwargs)
        if class_labels is not None:
            kwargs["class_labels"] = [class_labels[i] for i in index]
        elif image is None:
            kwargs["batch_size"] = len(index)
        if image is not None:
            kwargs.update(image=[image[i] for i in index], mask_image=[mask_image[i] for i in index])
        generators = [torch.Generator(generator_device).manual_seed(seed + i) for i in index]
        yield pipe(generator=generators, output_type=output_type, **kwargs).images


def generate_images(pipe, num_images: int, batch_size: int | None, seed: int, output_type: str = "pil", **kwargs):
    """`iter_generated_chunks` gathered: a list of PIL images, or the chunks' "latent" / "pt" / "np" outputs
    concatenated along the batch."""
    images = list(iter_generated_chunks(pipe, num_images, batch_size, seed, output_type=output_type, **kwargs))
    if output_type == "pil":
        return [item for chunk in images for item in chunk]
    return np.concatenate(images) if output_type == "np" else torch.cat(images)


def run(args: argparse.Namespace) -> int:
    from .default_model import DEFAULT_PIPELINE
    from .pipeline_mage import MagePipeline

    if args.num_images < 1:
        raise SystemExit("error: `--num-images` must be >= 1")
    if args.batch_size is not None and args.batch_size < 1:
        raise SystemExit("error: `--batch-size` must be >= 1")
    if (args.image is None) != (args.mask is None):
        raise SystemExit("error: inpainting needs both `--image` and `--mask`")
    device = torch.device(args.device)
    pipe = MagePipeline.from_pretrained(args.pipeline or DEFAULT_PIPELINE, **load_kwargs(getattr(torch, args.dtype)))
    pipe = pipe.to(device)
    pipe.set_progress_bar_config(disable=args.no_progress)
    if args.compile:
        pipe.compile_decoding_step(dynamic=False)
    conditional = pipe.transformer.config.num_condition_classes > 0
    labels = _labels(args.class_label)
    kwargs = {}
    if labels is not None:
        repeats = math.ceil(args.num_images / len(labels))
        kwargs["class_labels"] = (labels * repeats)[: args.num_images]
        kwargs["guidance_scale"] = 2.0 if args.guidance_scale is None else args.guidance_scale
    elif args.guidance_scale not in (None, 1.0):
        raise SystemExit("error: `--guidance-scale` needs `--class-label`")
    if args.image is not None:
        image, mask = PIL.Image.open(args.image).convert("RGB"), PIL.Image.open(args.mask).convert("L")
        kwargs.update(image=[image] * args.num_images, mask_image=[mask] * args.num_images)
    precision = (
        torch.autocast(device.type, dtype=getattr(torch, args.autocast)) if args.autocast else contextlib.nullcontext()
    )
    try:
        with precision:
            images = generate_images(
                pipe, args.num_images, args.batch_size, args.seed, generator_device=device,
                num_inference_steps=args.num_inference_steps,
                guidance_schedule=args.guidance_schedule, choice_temperature=args.choice_temperature, **kwargs,
            )
    except (ValueError, TypeError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    scale = args.scale or max(1, 256 // images[0].width)
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    _upscale(make_grid(images), scale).save(output)
    print(f"wrote {output.resolve()} ({len(images)} images"
          + (f", classes {kwargs['class_labels']}" if conditional and labels is not None else "") + ")")
    if args.output_dir:
        folder = Path(args.output_dir)
        folder.mkdir(parents=True, exist_ok=True)
        for index, image in enumerate(images):
            _upscale(image, scale).save(folder / f"{index:05d}.png")
        print(f"wrote {len(images)} PNGs to {folder.resolve()}")
    return 0


__all__ = ["add_arguments", "chunks", "generate_images", "iter_generated_chunks", "make_grid", "run"]
