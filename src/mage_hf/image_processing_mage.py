"""Image processor for MAGE: a `PilBackend` whose recipe is in class attributes (as transformers' CLIP processor's);
its methods are only what MAGE needs beyond the backend: torchvision's centre crop, float input already in [0, 1]
(the original feeds `ToTensor()` output), RGB as `Image.convert("RGB")` makes it, and errors naming the argument."""

from __future__ import annotations

from typing import Any

import numpy as np
import PIL.Image
import torch
from transformers.image_processing_backends import PilBackend
from transformers.image_processing_base import BatchFeature
from transformers.image_transforms import get_resize_output_image_size
from transformers.image_utils import ChannelDimension, PILImageResampling, SizeDict

_RANGE_TOLERANCE = 1e-5  # floats this far outside [0, 1] (rounding) are clipped; further out is an error
_IMAGE_CHANNELS = (1, 3, 4)  # gray, RGB, RGBA: what RGB conversion and PIL read, and what finds the channel axis
_OUTPUT_TYPES = ("pil", "np", "pt")
_SIZE_KEYS = {"size": (("shortest_edge",), ("height", "width")), "crop_size": (("height", "width"),)}
# The original evaluation (main_linprobe.py, util/datasets.py): `Resize(292)` then `CenterCrop(256)`, where
# 292 = int(256 / 0.875) "to maintain same ratio w.r.t. 224 images" (224 / 256 = 0.875).
_EVAL_CROP_FRACTION = 0.875


def _describe(value: Any) -> str:
    if isinstance(value, PIL.Image.Image):
        return f"PIL image of mode {value.mode!r} and size {value.size}"
    shape = f" of shape {tuple(value.shape)} and dtype {value.dtype}" if hasattr(value, "shape") else ""
    return type(value).__name__ + shape


def _output_size(image: np.ndarray, size: SizeDict) -> tuple[int, int]:
    """(height, width) of a `(C, H, W)` image resized to `size`: `{"shortest_edge": s}` keeps the aspect ratio,
    truncating the long edge as torchvision's `Resize(int)`."""
    if size.shortest_edge:
        return get_resize_output_image_size(
            image, size.shortest_edge, default_to_square=False, input_data_format=ChannelDimension.FIRST
        )
    return size.height, size.width


def _center_crop_box(height: int, width: int, size: SizeDict) -> tuple[tuple[int, int], tuple[int, int], int, int]:
    """torchvision's `CenterCrop` of an (H, W) image: zero padding (before, after) of the height and width when the
    image is smaller than the crop (half before, rounded down), then the crop's top and left offsets
    `round((H' - crop_height) / 2)`, `round((W' - crop_width) / 2)` in the padded image."""
    pad_h, pad_w = max(size.height - height, 0), max(size.width - width, 0)
    top, left = round((height + pad_h - size.height) / 2), round((width + pad_w - size.width) / 2)
    return (pad_h // 2, pad_h - pad_h // 2), (pad_w // 2, pad_w - pad_w // 2), top, left


class MageImageProcessor(PilBackend):
    r"""
    Turns images into MAGE `pixel_values`: float32 `(batch, channels, crop_height, crop_width)` in [0, 1].

    Steps: RGB (gray repeated, alpha dropped; `do_convert_rgb=False` keeps any channel count), bicubic resize
    (`{"shortest_edge": s}` keeps the aspect ratio, truncating the long edge as torchvision's `Resize(int)`), centre
    crop at torchvision's offsets `round((H - crop) / 2)` (smaller images zero-padded), uint8 pixels times 1/255.
    Float images must already be in [0, 1] and are not scaled. `do_normalize=True` is rejected.

    Images: PIL (any mode), numpy `(H, W)`, `(H, W, C)`, `(C, H, W)`, torch the same or `(B, C, H, W)`, or (nested)
    lists of them. Without `input_data_format`, the channel axis is the first or last of size 1, 3 or 4 (the first
    for tensors, the last for arrays when both fit).

    Presets: `for_image_size(n)`: shortest edge n, crop n (pretraining and generation; the saved default, n = 256).
    `for_evaluation(n)`: shortest edge `int(n / 0.875)` (292 for 256), crop n (the original linear-probe evaluation).

    Example:
        >>> processor = MageImageProcessor.for_image_size(256)
        >>> processor(PIL.Image.new("RGB", (320, 240)), return_tensors="pt")["pixel_values"].shape
        torch.Size([1, 3, 256, 256])
    """

    resample = PILImageResampling.BICUBIC
    size = {"shortest_edge": 256}  # noqa: RUF012 - transformers reads these class-level defaults
    default_to_square = False
    crop_size = {"height": 256, "width": 256}  # noqa: RUF012
    do_resize = True
    do_center_crop = True
    do_rescale = True
    do_normalize = False
    do_convert_rgb = True

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self._validate_preprocess_kwargs(**{name: getattr(self, name) for name in self._valid_kwargs_names})

    @classmethod
    def for_image_size(cls, image_size: int, crop_fraction: float = 1.0, **kwargs) -> MageImageProcessor:
        """Output `(B, 3, image_size, image_size)`: shortest edge to `int(image_size / crop_fraction)`, then a square
        centre crop of `image_size`. Other keyword arguments go to the constructor."""
        if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size <= 0:
            raise ValueError(f"`image_size` must be a positive int, got {image_size!r}")
        if not 0 < crop_fraction <= 1:
            raise ValueError(f"`crop_fraction` must be in (0, 1], got {crop_fraction!r}")
        crop_size = {"height": image_size, "width": image_size}
        return cls(size={"shortest_edge": int(image_size / crop_fraction)}, crop_size=crop_size, **kwargs)

    @classmethod
    def for_evaluation(cls, image_size: int = 256, **kwargs) -> MageImageProcessor:
        """The original evaluation: `Resize(int(image_size / 0.875), BICUBIC)` (292 for 256), then
        `CenterCrop(image_size)`. The saved default stays `for_image_size` (what pretraining and generation see)."""
        return cls.for_image_size(image_size, crop_fraction=_EVAL_CROP_FRACTION, **kwargs)

    def _validate_preprocess_kwargs(self, **kwargs) -> None:
        if kwargs.get("do_normalize"):
            raise ValueError("`do_normalize` must be False: MAGE reads pixels in [0, 1], without mean/std")
        for name, key_sets in _SIZE_KEYS.items():
            value = dict(kwargs.get(name) or {})
            if kwargs.get(name) is not None and (tuple(sorted(value)) not in key_sets or min(value.values()) <= 0):
                keys = " or ".join(map(str, key_sets))
                raise ValueError(f"`{name}` must have the keys {keys} with positive values, got {value}")
        super()._validate_preprocess_kwargs(**kwargs)

    def _prepare_images_structure(self, images, expected_ndims: int = 3, _depth: int = 0) -> list:
        """A flat list of single images: lists may nest once, 4-D arrays/tensors are batches. Paths are not loaded."""
        if isinstance(images, (list, tuple)):
            if not images or _depth == 2:
                raise ValueError("`images` must be an image, a list of images or a list of lists of images, got "
                                 + ("a deeper list" if images else "an empty list"))
            return [image for item in images for image in self._prepare_images_structure(item, _depth=_depth + 1)]
        if not isinstance(images, (PIL.Image.Image, np.ndarray, torch.Tensor)):
            hint = " (load files with PIL.Image.open first)" if isinstance(images, (str, bytes)) else ""
            raise TypeError(f"`images` must be PIL images, numpy arrays or tensors; got {_describe(images)}{hint}")
        if isinstance(images, PIL.Image.Image) or images.ndim in (2, 3):
            return [images]
        if images.ndim == 4:
            return list(images)
        raise ValueError(f"`images` arrays must be (H, W), (H, W, C), (C, H, W) or a batch, got {_describe(images)}")

    def process_image(self, image, do_convert_rgb=None, input_data_format=None, do_rescale=None,
                      rescale_factor=None, **kwargs) -> np.ndarray:
        """One image -> `(C, H, W)` numpy: uint8 if it is scaled by 1/255 after resizing, else float32 in [0, 1]."""
        if not isinstance(image, PIL.Image.Image):
            image, input_data_format = self._to_channels_first(image, input_data_format), ChannelDimension.FIRST
        image = super().process_image(image, do_convert_rgb=do_convert_rgb, input_data_format=input_data_format)
        if 0 in image.shape:
            raise ValueError(f"`images` must have a non-zero height and width, got {_describe(image)}")
        if image.dtype == np.uint8 and do_rescale and abs(rescale_factor * 255.0 - 1.0) < 1e-9:
            return image  # resized as uint8 (bit-exact with PIL), then scaled by `rescale`
        if image.dtype.kind not in "biuf":
            raise TypeError(f"`images` must have an integer, boolean or floating dtype, got {_describe(image)}")
        scaled = do_rescale and image.dtype.kind in "iu"
        values = image.astype(np.float32) * np.float32(rescale_factor if scaled else 1.0)
        low, high = float(values.min()), float(values.max())
        if not (low >= -_RANGE_TOLERANCE and high <= 1.0 + _RANGE_TOLERANCE):
            how = "after scaling by `rescale_factor`" if scaled else "(floats, and integers with `do_rescale=False`)"
            raise ValueError(f"`images` must be in [0, 1] {how}; got values in [{low}, {high}]")
        return np.clip(values, 0.0, 1.0)

    @staticmethod
    def _to_channels_first(image: np.ndarray | torch.Tensor, input_data_format) -> np.ndarray:
        is_tensor = isinstance(image, torch.Tensor)
        if is_tensor and image.dtype in (torch.float16, torch.bfloat16):
            image = image.float()
        image = image.detach().cpu().numpy() if is_tensor else np.asarray(image)
        if image.ndim == 2:
            return image[None]
        if input_data_format is None:
            first, last = image.shape[0] in _IMAGE_CHANNELS, image.shape[-1] in _IMAGE_CHANNELS
            if not (first or last):
                raise ValueError(f"`images`: no channel axis of size 1, 3 or 4 in {_describe(image)}; pass "
                                 "`input_data_format` for other channel counts")
            input_data_format = "channels_first" if first and (is_tensor or not last) else "channels_last"
        return np.moveaxis(image, -1, 0) if ChannelDimension(input_data_format) == ChannelDimension.LAST else image

    def convert_to_rgb(self, image: PIL.Image.Image | np.ndarray, input_data_format=None) -> np.ndarray:
        """RGB as `Image.convert("RGB")` makes it (the original's loader): alpha dropped, not composited on white as
        transformers does; `(C, H, W)` arrays: gray repeated, a 4th channel dropped."""
        if isinstance(image, PIL.Image.Image):
            if image.mode == "P" and "transparency" in image.info:
                image = image.convert("RGBA")  # Pillow's advice for palette transparency; same pixels, no warning
            return np.asarray(image.convert("RGB"))
        if image.shape[0] not in _IMAGE_CHANNELS:
            raise ValueError(f"`images` must have 1, 3 or 4 channels to become RGB, got {_describe(image)}; pass "
                             "`do_convert_rgb=False` to keep them")
        return np.repeat(image, 3, axis=0) if image.shape[0] == 1 else image[:3]

    def resize(self, image: np.ndarray, size: SizeDict, resample=None, **kwargs) -> np.ndarray:
        """Resize each channel of a `(C, H, W)` image with PIL: uint8 in mode "L" (bit-exact with resizing the RGB PIL
        image), float32 in mode "F", then clipped to [0, 1]. (`PilBackend.resize` quantises floats to uint8 and
        resizes 2- and 4-channel arrays as alpha-premultiplied images.)"""
        height, width = _output_size(image, size)
        resample = PILImageResampling(resample if resample is not None else self.resample)
        channels = [PIL.Image.fromarray(np.ascontiguousarray(channel)) for channel in image]
        resized = np.stack([np.asarray(channel.resize((width, height), resample=resample)) for channel in channels])
        return resized if resized.dtype == np.uint8 else np.clip(resized, 0.0, 1.0)

    def center_crop(self, image: np.ndarray, size: SizeDict, **kwargs) -> np.ndarray:
        """torchvision's `CenterCrop`: zero-pad an image smaller than the crop (half before, rounded down), then crop
        at `round((H - crop_height) / 2)`, `round((W - crop_width) / 2)`; `PilBackend` floors and pads the other way."""
        pad_h, pad_w, top, left = _center_crop_box(image.shape[1], image.shape[2], size)
        image = np.pad(image, ((0, 0), pad_h, pad_w))
        return image[:, top : top + size.height, left : left + size.width]

    def rescale(self, image: np.ndarray, scale: float, **kwargs) -> np.ndarray:
        """uint8 pixels times `scale` in float32; float images are already in [0, 1] and stay as they are."""
        return image.astype(np.float32) * np.float32(scale) if image.dtype == np.uint8 else image

    def _preprocess(self, images: list[np.ndarray], return_tensors=None, data_format=None, **kwargs) -> BatchFeature:
        """`PilBackend`'s resize -> crop -> rescale, then `data_format` and a clear error for unstackable shapes."""
        pixel_values = super()._preprocess(images, return_tensors=None, **kwargs)["pixel_values"]
        return self._batch(pixel_values, return_tensors, data_format)

    @staticmethod
    def _batch(pixel_values: list[np.ndarray], return_tensors, data_format) -> BatchFeature:
        if data_format is not None and ChannelDimension(data_format) == ChannelDimension.LAST:
            pixel_values = [np.moveaxis(image, 0, -1) for image in pixel_values]
        shapes = sorted({image.shape for image in pixel_values})
        if return_tensors is not None and len(shapes) > 1:
            raise ValueError(f"`images` end up with different shapes {shapes}, which cannot be stacked; keep "
                             "`do_resize`/`do_center_crop` on or pass `return_tensors=None`")
        return BatchFeature(data={"pixel_values": pixel_values}, tensor_type=return_tensors)

    def postprocess(self, images: torch.Tensor | np.ndarray, output_type: str = "pil"):
        """Model images `(B, C, H, W)` or one `(C, H, W)`, float (any range) or uint8, clipped to [0, 1] -> "pil": a
        list of B PIL images (mode "L", "RGB" or "RGBA" for C = 1, 3, 4); "np": float32 `(B, H, W, C)`; "pt": float32
        `(B, C, H, W)` on the input's device."""
        if output_type not in _OUTPUT_TYPES:
            raise ValueError(f"`output_type` must be one of {_OUTPUT_TYPES}, got {output_type!r}")
        if not isinstance(images, (torch.Tensor, np.ndarray)):
            raise TypeError(f"`images` must be a torch.Tensor or numpy.ndarray, got {_describe(images)}")
        images = torch.as_tensor(images).detach()
        images = images[None] if images.ndim == 3 else images
        if images.ndim != 4 or (output_type == "pil" and images.shape[1] not in _IMAGE_CHANNELS):
            pil = ", C = 1, 3 or 4 for PIL output" if output_type == "pil" else ""
            raise ValueError(f"`images` must be (B, C, H, W) or (C, H, W){pil}; got {tuple(images.shape)}")
        if not (images.is_floating_point() or images.dtype == torch.uint8):
            raise TypeError(f"`images` must be floating point or uint8, got {_describe(images)}")
        images = (images / 255.0 if images.dtype == torch.uint8 else images.float()).clamp(0.0, 1.0)
        if output_type == "pt":
            return images
        array = images.permute(0, 2, 3, 1).cpu().numpy()
        if output_type == "np":
            return array
        array = (array * 255.0).round().astype(np.uint8)
        return [PIL.Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image) for image in array]

    postprocess_images = postprocess


_TORCH_MODES = {PILImageResampling.NEAREST: "nearest-exact", PILImageResampling.BILINEAR: "bilinear",
                PILImageResampling.BICUBIC: "bicubic"}


class MageImageProcessorTorch(MageImageProcessor):
    """`MageImageProcessor` with its resize, crop and rescale in torch ops (`backend="torchvision"` in
    `AutoImageProcessor`; torchvision itself is not needed): antialiased `F.interpolate` in float32 (bicubic,
    bilinear or nearest), uint8 images rounded back to integers as PIL does, the same crop offsets and padding.
    Agrees with the PIL backend to within a few grey levels (PIL's filters are not torch's); same shapes, dtype and
    errors. `device="cuda"` runs the ops there; the output comes back on the CPU."""

    def __init__(self, device: str | torch.device | None = None, **kwargs):
        super().__init__(**kwargs)
        self.device = device

    @property
    def backend(self) -> str:
        return "torch"

    def to_dict(self) -> dict[str, Any]:
        output = super().to_dict()
        output.pop("device", None)  # where to run is not part of the saved recipe
        # One saved type for both backends (as transformers' own processors): the backend is chosen when loading.
        output["image_processor_type"] = MageImageProcessor.__name__
        return output

    def _preprocess(self, images: list[np.ndarray], do_resize, size, resample, do_center_crop, crop_size, do_rescale,
                    rescale_factor, return_tensors=None, data_format=None, **kwargs) -> BatchFeature:
        mode = _TORCH_MODES.get(PILImageResampling(resample if resample is not None else self.resample))
        if do_resize and mode is None:
            raise ValueError(f"`resample` must be one of {list(_TORCH_MODES)} for the torch backend, got {resample!r}")
        pixel_values = []
        for image in images:
            integer = image.dtype == np.uint8  # otherwise float32 in [0, 1] (`process_image`)
            pixels = torch.from_numpy(np.ascontiguousarray(image)).to(self.device, torch.float32)
            if do_resize:
                pixels = self._torch_resize(pixels, image, size, mode, integer)
            if do_center_crop:
                pixels = self._torch_center_crop(pixels, crop_size)
            if do_rescale and integer:
                pixels = pixels * np.float32(rescale_factor)
            keep_uint8 = integer and not do_rescale
            pixel_values.append((pixels.to(torch.uint8) if keep_uint8 else pixels).cpu().numpy())
        return self._batch(pixel_values, return_tensors, data_format)

    @staticmethod
    def _torch_resize(pixels: torch.Tensor, image: np.ndarray, size: SizeDict, mode: str, integer: bool) -> torch.Tensor:
        height, width = _output_size(image, size)
        antialias = mode in ("bilinear", "bicubic")
        resized = torch.nn.functional.interpolate(pixels[None], size=(height, width), mode=mode, antialias=antialias)[0]
        return resized.round().clamp(0, 255) if integer else resized.clamp(0.0, 1.0)

    @staticmethod
    def _torch_center_crop(pixels: torch.Tensor, size: SizeDict) -> torch.Tensor:
        pad_h, pad_w, top, left = _center_crop_box(pixels.shape[1], pixels.shape[2], size)
        pixels = torch.nn.functional.pad(pixels, (*pad_w, *pad_h))
        return pixels[:, top : top + size.height, left : left + size.width]


__all__ = ["MageImageProcessor", "MageImageProcessorTorch"]
