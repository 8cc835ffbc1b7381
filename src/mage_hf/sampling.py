"""Seeded, chunked sampling from a `MagePipeline`, shardable over processes.

Image i is always generated with its own `torch.Generator(device).manual_seed(seed + i)`, so its tokens do not
depend on how many images one pipeline call holds (`batch_size`) or on how the images are split over processes
(decoded pixels may differ by float rounding: the VQGAN's convs can pick other kernels for another batch size).
`mage-hf generate`, `mage-hf evaluate generation` and the scripts sample through here.
"""

import math
from collections.abc import Iterator, Sequence

import numpy as np
import PIL.Image
import torch
from diffusers.utils import make_image_grid


def index_chunks(indices: Sequence[int], batch_size: int | None) -> list[list[int]]:
    """`indices` in consecutive chunks of at most `batch_size` (all in one chunk when None)."""
    if batch_size is not None and batch_size < 1:
        raise ValueError(f"`batch_size` must be >= 1, got {batch_size}")
    indices = list(indices)
    size = len(indices) if batch_size is None else batch_size
    return [indices[start : start + size] for start in range(0, len(indices), max(size, 1))]


def shard_indices(num_images: int, process_index: int = 0, num_processes: int = 1) -> list[int]:
    """The images of one process: i with `i % num_processes == process_index` (balanced, order kept)."""
    if not 0 <= process_index < num_processes:
        raise ValueError(f"`process_index` must be in [0, {num_processes}), got {process_index}")
    return list(range(process_index, num_images, num_processes))


def iter_generated_chunks(
    pipe,
    indices: Sequence[int],
    batch_size: int | None,
    seed: int,
    class_labels: Sequence | None = None,
    image: Sequence | None = None,
    mask_image: Sequence | None = None,
    generator_device: str | torch.device = "cpu",
    output_type: str = "pil",
    **call_kwargs,
) -> Iterator[tuple[list[int], object]]:
    """Yield `(image indices, pipeline output images)` for calls of at most `batch_size` images, over `indices`.

    `class_labels`, `image` and `mask_image` are indexed by image index (None: not used); other keyword arguments
    go to every pipeline call.
    """
    for chunk in index_chunks(indices, batch_size):
        kwargs = dict(call_kwargs)
        if class_labels is not None:
            kwargs["class_labels"] = [class_labels[i] for i in chunk]
        elif image is None:
            kwargs["batch_size"] = len(chunk)
        if image is not None:
            kwargs["image"] = [image[i] for i in chunk]
            if mask_image is not None:
                kwargs["mask_image"] = [mask_image[i] for i in chunk]
        generators = [torch.Generator(generator_device).manual_seed(seed + i) for i in chunk]
        yield chunk, pipe(generator=generators, output_type=output_type, **kwargs).images


def generate_images(pipe, num_images: int, batch_size: int | None, seed: int, output_type: str = "pil", **kwargs):
    """All `num_images` of one process: a list of PIL images, or the "latent" / "pt" / "np" outputs concatenated."""
    outputs = [images for _, images in iter_generated_chunks(pipe, range(num_images), batch_size, seed,
                                                              output_type=output_type, **kwargs)]
    if output_type == "pil":
        return [item for chunk in outputs for item in chunk]
    return np.concatenate(outputs) if output_type == "np" else torch.cat(outputs)


def sample_uint8_batches(
    pipe, indices: Sequence[int], batch_size: int, seed: int = 0, class_labels: Sequence | None = None, **call_kwargs
) -> Iterator[torch.Tensor]:
    """The images of `indices` as uint8 (B, 3, H, W) CPU batches (for metrics and PNG files)."""
    for _, images in iter_generated_chunks(pipe, indices, batch_size, seed, class_labels=class_labels,
                                           output_type="pt", **call_kwargs):
        yield (images.float().clamp(0, 1) * 255).round().to(torch.uint8).cpu()


def image_grid(images: Sequence[PIL.Image.Image], columns: int | None = None) -> PIL.Image.Image:
    """Same-size images in rows of `columns` (default: about square), the last row padded black
    (diffusers' `make_image_grid`, which needs a full grid)."""
    columns = columns or math.ceil(math.sqrt(len(images)))
    rows = math.ceil(len(images) / columns)
    blank = PIL.Image.new("RGB", images[0].size)
    return make_image_grid([*images, *[blank] * (rows * columns - len(images))], rows=rows, cols=columns)


def balanced_labels(num_images: int, num_classes: int) -> list[int]:
    """Class i % num_classes for image i: every class equally often (the class-conditional FID protocol)."""
    return [index % num_classes for index in range(num_images)]


__all__ = [
    "balanced_labels",
    "generate_images",
    "image_grid",
    "index_chunks",
    "iter_generated_chunks",
    "sample_uint8_batches",
    "shard_indices",
]
