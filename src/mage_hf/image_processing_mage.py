"""Image processor for MAGE: RGB pixels in [0, 1] at the model's square size, with no mean/std normalisation.

MAGE's encoder and VQGAN tokenizer read images the way torchvision's `ToTensor` leaves them: float32, channels
first, values in [0, 1]. The evaluation transform of the original code is a bicubic resize of the shortest edge
followed by a center crop, both done on the PIL image; `MageImageProcessor` reproduces that for uint8 / PIL input.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import PIL.Image
import torch
from transformers.image_processing_backends import PilBackend
from transformers.image_processing_base import BatchFeature
from transformers.image_utils import ChannelDimension, ImageInput, PILImageResampling, SizeDict
from transformers.processing_utils import ImagesKwargs, Unpack
from transformers.utils import TensorType

# Tolerance for float inputs that stray just outside [0, 1] through rounding (they are clipped).
_RANGE_TOLERANCE = 1e-5
_CHANNEL_COUNTS = (1, 3, 4)
_OUTPUT_TYPES = ("pil", "np", "pt")


def _describe(value: Any) -> str:
    """Short description of an input for error messages."""
    if isinstance(value, (np.ndarray, torch.Tensor)):
        return f"{type(value).__name__} of shape {tuple(value.shape)} and dtype {value.dtype}"
    if isinstance(value, PIL.Image.Image):
        return f"PIL image of mode {value.mode!r} and size {value.size}"
    return type(value).__name__


class MageImageProcessor(PilBackend):
    r"""
    Turns images into MAGE `pixel_values`: float32 `(batch, 3, crop_height, crop_width)` in [0, 1].

    Steps, in order: convert to RGB, resize (bicubic; by default the shortest edge goes to `size["shortest_edge"]`
    keeping the aspect ratio), center crop to `crop_size`, scale integer pixels by `rescale_factor` (1/255).
    There is no mean/std normalisation: `do_normalize=True` is rejected.

    Accepted images: a `PIL.Image.Image` (any mode: grayscale, RGBA and palette images become RGB, alpha is
    dropped as `Image.convert("RGB")` does), a numpy array `(H, W)`, `(H, W, C)` or `(C, H, W)`, a torch tensor
    `(C, H, W)`, `(H, W, C)`, `(H, W)` or a batch `(B, C, H, W)`, or a list of any of these; `C` is 1, 3 or 4.
    Integer arrays/tensors hold values in [0, 255]; floating-point ones must already be in [0, 1] (like the output
    of `ToTensor`) and are not rescaled.

    Args:
        do_resize (`bool`, defaults to `True`): whether to resize.
        size (`dict[str, int]`, defaults to `{"shortest_edge": 256}`): `{"shortest_edge": s}` (keep aspect ratio) or
            `{"height": h, "width": w}`; an int means `{"shortest_edge": int}`.
        resample (`PILImageResampling`, defaults to `BICUBIC`): resampling filter.
        do_center_crop (`bool`, defaults to `True`): whether to center crop (zero-padding images that are smaller).
        crop_size (`dict[str, int]`, defaults to `{"height": 256, "width": 256}`): output size of the crop.
        do_rescale (`bool`, defaults to `True`): whether to multiply integer pixels by `rescale_factor`.
        rescale_factor (`float`, defaults to `1/255`): scale for integer pixels.
        do_convert_rgb (`bool`, defaults to `True`): whether to turn 1- and 4-channel images into RGB.

    Example:
        >>> processor = MageImageProcessor.for_image_size(256)
        >>> processor(PIL.Image.new("RGB", (320, 240)), return_tensors="pt")["pixel_values"].shape
        torch.Size([1, 3, 256, 256])
    """

    model_input_names = ["pixel_values"]  # noqa: RUF012 - transformers reads these class-level defaults

    resample = PILImageResampling.BICUBIC
    size = {"shortest_edge": 256}  # noqa: RUF012
    default_to_square = False
    crop_size = {"height": 256, "width": 256}  # noqa: RUF012
    do_resize = True
    do_center_crop = True
    do_rescale = True
    rescale_factor = 1 / 255
    do_normalize = False
    do_convert_rgb = True

    def __init__(self, **kwargs: Unpack[ImagesKwargs]):
        super().__init__(**kwargs)
        self._check_settings(
            do_normalize=self.do_normalize,
            size=self.size,
            crop_size=self.crop_size,
            rescale_factor=self.rescale_factor,
        )

    @classmethod
    def for_image_size(cls, image_size: int, **kwargs) -> MageImageProcessor:
        """Processor whose output is `(B, 3, image_size, image_size)`: shortest edge to `image_size`, then a square
        center crop of `image_size`. Other keyword arguments go to the constructor."""
        if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size <= 0:
            raise ValueError(f"`image_size` must be a positive int, got {image_size!r}")
        return cls(
            size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size}, **kwargs
        )

    # ------------------------------------------------------------------ validation

    @staticmethod
    def _check_settings(
        do_normalize: bool | None = None,
        size: SizeDict | None = None,
        crop_size: SizeDict | None = None,
        rescale_factor: float | None = None,
        **kwargs,
    ) -> None:
        """Raise `ValueError` for settings MAGE cannot use."""
        if do_normalize:
            raise ValueError(
                "`do_normalize` must be False: MAGE takes pixels in [0, 1] without mean/std normalisation"
            )
        if size is not None:
            if size.shortest_edge is not None and size.longest_edge is None and size.height is None:
                if size.shortest_edge <= 0:
                    raise ValueError(f"`size['shortest_edge']` must be positive, got {size.shortest_edge}")
            elif size.height is not None and size.width is not None and size.shortest_edge is None:
                if size.height <= 0 or size.width <= 0:
                    raise ValueError(f"`size` height and width must be positive, got {dict(size)}")
            else:
                raise ValueError(
                    f"`size` must be {{'shortest_edge': int}} or {{'height': int, 'width': int}}, got {dict(size)}"
                )
        crop_ok = crop_size is None or (
            crop_size.height is not None and crop_size.width is not None and min(crop_size.height, crop_size.width) > 0
        )
        if not crop_ok:
            raise ValueError(
                f"`crop_size` must be {{'height': int, 'width': int}} with positive values, got {dict(crop_size)}"
            )
        if rescale_factor is not None and not rescale_factor > 0:
            raise ValueError(f"`rescale_factor` must be positive, got {rescale_factor}")

    def _validate_preprocess_kwargs(self, **kwargs) -> None:
        self._check_settings(**kwargs)
        super()._validate_preprocess_kwargs(**kwargs)

    # ------------------------------------------------------------------ input preparation

    def _prepare_images_structure(self, images: ImageInput, expected_ndims: int = 3) -> list[Any]:
        """Flatten `images` (one image, a batch array/tensor, or a possibly nested list) into a list of single
        images; 4-D arrays/tensors are split along their first axis. Strings and URLs are not loaded."""
        flat: list[Any] = []

        def visit(item: Any, depth: int) -> None:
            if isinstance(item, PIL.Image.Image):
                flat.append(item)
            elif isinstance(item, (np.ndarray, torch.Tensor)):
                if item.ndim in (2, 3):
                    flat.append(item)
                elif item.ndim == 4:
                    flat.extend(item[i] for i in range(item.shape[0]))
                else:
                    raise ValueError(
                        "`images` arrays/tensors must be (H, W), (H, W, C), (C, H, W) or a batch (B, C, H, W); "
                        f"got {_describe(item)}"
                    )
            elif isinstance(item, (list, tuple)):
                if depth >= 2:
                    raise ValueError("`images` may be a list of images or a list of lists of images, not deeper")
                if len(item) == 0:
                    raise ValueError("`images` must not be an empty list")
                for element in item:
                    visit(element, depth + 1)
            else:
                hint = " (load files with PIL.Image.open first)" if isinstance(item, (str, bytes)) else ""
                raise TypeError(
                    "`images` must be a PIL.Image.Image, numpy.ndarray or torch.Tensor, or a list of them; "
                    f"got {_describe(item)}{hint}"
                )

        visit(images, 0)
        if not flat:
            raise ValueError("`images` contains no image")
        return flat

    def process_image(
        self,
        image: ImageInput,
        do_convert_rgb: bool | None = None,
        input_data_format: str | ChannelDimension | None = None,
        do_rescale: bool | None = None,
        rescale_factor: float | None = None,
        **kwargs,
    ) -> np.ndarray:
        """One image -> `(3, H, W)` numpy array, either uint8 (rescaled later, after resizing) or float32 in [0, 1].

        Raises `ValueError` when no channel axis of size 1, 3 or 4 is found, when the image is not RGB and
        `do_convert_rgb` is False, or when its values (after scaling integers) are outside [0, 1].
        """
        if isinstance(image, PIL.Image.Image):
            if do_convert_rgb and image.mode != "RGB":
                if image.mode == "P" and "transparency" in image.info:
                    image = image.convert("RGBA")
                image = image.convert("RGB")
            array = np.asarray(image)
            array = array[None] if array.ndim == 2 else np.moveaxis(array, -1, 0)
            from_torch = False
        else:
            from_torch = isinstance(image, torch.Tensor)
            if from_torch:
                tensor = image.detach().cpu()
                if tensor.dtype in (torch.bfloat16, torch.float16):
                    tensor = tensor.float()
                array = tensor.numpy()
            else:
                array = np.asarray(image)
            array = self._to_channels_first(array, input_data_format, prefer_first=from_torch)

        if array.shape[1] == 0 or array.shape[2] == 0:
            raise ValueError(f"`images` must have a non-zero height and width, got {_describe(array)}")

        channels = array.shape[0]
        if channels != 3:
            if not do_convert_rgb:
                raise ValueError(
                    f"`images` must have 3 channels when `do_convert_rgb=False`, got {channels} ({_describe(array)})"
                )
            array = np.repeat(array, 3, axis=0) if channels == 1 else array[:3]  # gray -> RGB; RGBA -> drop alpha

        return self._to_unit_range(array, do_rescale, rescale_factor)

    @staticmethod
    def _to_channels_first(
        array: np.ndarray, input_data_format: str | ChannelDimension | None, prefer_first: bool
    ) -> np.ndarray:
        """`(H, W)`, `(H, W, C)` or `(C, H, W)` -> `(C, H, W)`. Without `input_data_format`, torch tensors are read
        as channels-first and numpy arrays as channels-last when both readings are possible."""
        if array.ndim == 2:
            return array[None]
        if input_data_format is not None:
            channels_last = ChannelDimension(input_data_format) == ChannelDimension.LAST
        else:
            first_ok = array.shape[0] in _CHANNEL_COUNTS
            last_ok = array.shape[-1] in _CHANNEL_COUNTS
            if not (first_ok or last_ok):
                raise ValueError(
                    f"`images`: no channel axis of size 1, 3 or 4 in {_describe(array)}; expected an image "
                    "(H, W, C) or (C, H, W)"
                )
            channels_last = last_ok and not (first_ok and prefer_first)
        array = np.moveaxis(array, -1, 0) if channels_last else array
        if array.shape[0] not in _CHANNEL_COUNTS:
            raise ValueError(f"`images` must have 1, 3 or 4 channels, got {_describe(array)}")
        return array

    @staticmethod
    def _to_unit_range(array: np.ndarray, do_rescale: bool | None, rescale_factor: float | None) -> np.ndarray:
        """Keep uint8 pixels for PIL resizing when they will be rescaled; otherwise return float32 in [0, 1]."""
        if array.dtype == np.uint8 and do_rescale and abs(rescale_factor * 255.0 - 1.0) < 1e-9:
            return np.ascontiguousarray(array)
        if array.dtype == np.bool_:
            values = array.astype(np.float32)
        elif np.issubdtype(array.dtype, np.integer):
            values = array.astype(np.float32)
            if do_rescale:
                values = values * np.float32(rescale_factor)
        elif np.issubdtype(array.dtype, np.floating):
            values = array.astype(np.float32)
        else:
            raise TypeError(f"`images` must have an integer, boolean or floating dtype, got {_describe(array)}")
        low, high = float(values.min()), float(values.max())
        if not (low >= -_RANGE_TOLERANCE and high <= 1.0 + _RANGE_TOLERANCE):
            if np.issubdtype(array.dtype, np.integer):
                expected = "integer images must lie in [0, 1] after scaling by `rescale_factor`"
                expected += "" if do_rescale else " (`do_rescale` is False)"
            else:
                expected = "floating-point images must already be in [0, 1] (pass uint8 for [0, 255] data)"
            raise ValueError(f"`images`: {expected}; got values in [{low}, {high}]")
        return np.clip(values, 0.0, 1.0)

    # ------------------------------------------------------------------ transforms

    @staticmethod
    def _output_size(height: int, width: int, size: SizeDict) -> tuple[int, int]:
        """Target (height, width): shortest edge to `size.shortest_edge` (long edge truncated, as torchvision's
        `Resize(int)`), or exactly `(size.height, size.width)`."""
        if size.shortest_edge is None:
            return size.height, size.width
        short, long = (height, width) if height <= width else (width, height)
        new_short, new_long = size.shortest_edge, int(size.shortest_edge * long / short)
        return (new_short, new_long) if height <= width else (new_long, new_short)

    def resize(
        self, image: np.ndarray, size: SizeDict, resample: PILImageResampling | int | None = None, **kwargs
    ) -> np.ndarray:
        """Resize a `(3, H, W)` image with PIL. uint8 images are resized as RGB images (bit-exact with resizing the
        PIL image); float images channel by channel in 32-bit float mode, then clipped to [0, 1]."""
        resample = PILImageResampling.BICUBIC if resample is None else PILImageResampling(resample)
        height, width = image.shape[-2:]
        new_height, new_width = self._output_size(height, width, size)
        if (new_height, new_width) == (height, width):
            return image
        if image.dtype == np.uint8:
            resized = PIL.Image.fromarray(np.ascontiguousarray(np.moveaxis(image, 0, -1)))
            resized = resized.resize((new_width, new_height), resample=resample)
            return np.moveaxis(np.asarray(resized), -1, 0)
        channels = [
            np.asarray(PIL.Image.fromarray(channel).resize((new_width, new_height), resample=resample))
            for channel in np.ascontiguousarray(image, dtype=np.float32)
        ]
        return np.clip(np.stack(channels), 0.0, 1.0)

    def center_crop(self, image: np.ndarray, size: SizeDict, **kwargs) -> np.ndarray:
        """Crop the center `(size.height, size.width)` of a `(C, H, W)` image, rounding offsets like torchvision's
        `CenterCrop`; images smaller than the crop are zero-padded first."""
        crop_height, crop_width = size.height, size.width
        height, width = image.shape[-2:]
        if crop_height > height or crop_width > width:
            pad_h, pad_w = max(crop_height - height, 0), max(crop_width - width, 0)
            image = np.pad(image, ((0, 0), (pad_h // 2, (pad_h + 1) // 2), (pad_w // 2, (pad_w + 1) // 2)))
            height, width = image.shape[-2:]
        top = round((height - crop_height) / 2.0)
        left = round((width - crop_width) / 2.0)
        return image[:, top : top + crop_height, left : left + crop_width]

    def _preprocess(
        self,
        images: list[np.ndarray],
        do_resize: bool,
        size: SizeDict,
        resample: PILImageResampling | int | None,
        do_center_crop: bool,
        crop_size: SizeDict,
        do_rescale: bool,
        rescale_factor: float,
        return_tensors: str | TensorType | None = None,
        data_format: str | ChannelDimension | None = None,
        **kwargs,
    ) -> BatchFeature:
        """Resize, crop and scale prepared `(3, H, W)` images; returns `pixel_values` float32 `(B, 3, H, W)` for
        `return_tensors` "pt"/"np", or a list of `(3, H, W)` arrays when it is None."""
        processed = []
        for image in images:
            if do_resize:
                image = self.resize(image, size=size, resample=resample)
            if do_center_crop:
                image = self.center_crop(image, crop_size)
            if image.dtype == np.uint8:  # only kept as uint8 when it is to be rescaled by 1/255
                image = image.astype(np.float32) * np.float32(rescale_factor)
            image = np.ascontiguousarray(image, dtype=np.float32)
            if data_format is not None and ChannelDimension(data_format) == ChannelDimension.LAST:
                image = np.ascontiguousarray(np.moveaxis(image, 0, -1))
            processed.append(image)

        pixel_values: list[np.ndarray] | np.ndarray = processed
        if return_tensors is not None:
            shapes = sorted({tuple(image.shape) for image in processed})
            if len(shapes) > 1:
                raise ValueError(
                    f"`images` end up with different shapes {shapes}, which cannot be stacked into one tensor; keep "
                    "`do_resize`/`do_center_crop` on or pass `return_tensors=None`"
                )
            pixel_values = np.stack(processed)
        return BatchFeature(data={"pixel_values": pixel_values}, tensor_type=return_tensors)

    # ------------------------------------------------------------------ outputs

    def postprocess(
        self, images: torch.Tensor | np.ndarray, output_type: str = "pil"
    ) -> list[PIL.Image.Image] | np.ndarray | torch.Tensor:
        """Model images `(B, 3, H, W)` (or one `(3, H, W)`), any range, -> clipped to [0, 1] and returned as:
        "pil": a list of B RGB `PIL.Image.Image`; "np": float32 numpy `(B, H, W, 3)`; "pt": float32 torch
        `(B, 3, H, W)` (on the input's device for tensor input)."""
        if output_type not in _OUTPUT_TYPES:
            raise ValueError(f"`output_type` must be one of {_OUTPUT_TYPES}, got {output_type!r}")
        if isinstance(images, np.ndarray):
            images = torch.from_numpy(images)
        if not isinstance(images, torch.Tensor):
            raise TypeError(f"`images` must be a torch.Tensor or numpy.ndarray, got {_describe(images)}")
        if images.ndim == 3:
            images = images[None]
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"`images` must have shape (B, 3, H, W) or (3, H, W), got {tuple(images.shape)}")
        if images.dtype == torch.uint8:
            images = images.float() / 255.0
        elif not images.is_floating_point():
            raise TypeError(f"`images` must be floating point or uint8, got {_describe(images)}")
        images = images.detach().float().clamp(0.0, 1.0)
        if output_type == "pt":
            return images
        array = images.permute(0, 2, 3, 1).cpu().numpy()
        if output_type == "np":
            return array
        return [PIL.Image.fromarray((image * 255.0).round().astype(np.uint8)) for image in array]

    postprocess_images = postprocess


__all__ = ["MageImageProcessor"]
