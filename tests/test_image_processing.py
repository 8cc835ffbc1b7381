"""Tests for `MageImageProcessor`: pixels in [0, 1], shortest-edge resize + centre crop, no normalisation, and a
reference fixture of the processor's outputs from before its rewrite onto `PilBackend`."""

from __future__ import annotations

import functools
import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import PIL.Image
import pytest
import torch
from transformers import AutoImageProcessor, PreTrainedConfig
from transformers.image_utils import SizeDict

from mage_hf.image_processing_mage import MageImageProcessor, MageImageProcessorTorch

S = 32


@pytest.fixture(params=[MageImageProcessor, MageImageProcessorTorch], ids=["pil", "torch"])
def processor(request) -> MageImageProcessor:
    """Both backends pass every behaviour test; exact pixel values are the PIL backend's (the fixture below)."""
    return request.param.for_image_size(S)


def random_uint8(height: int, width: int, channels: int = 3, seed: int = 0) -> np.ndarray:
    shape = (height, width) if channels == 0 else (height, width, channels)
    return np.random.default_rng(seed).integers(0, 256, size=shape, dtype=np.uint8)


def check_pixels(pixel_values: torch.Tensor, batch: int, size: int = S) -> None:
    assert isinstance(pixel_values, torch.Tensor)
    assert pixel_values.shape == (batch, 3, size, size)
    assert pixel_values.dtype == torch.float32
    assert pixel_values.min() >= 0.0 and pixel_values.max() <= 1.0


def test_defaults_are_the_pretraining_and_generation_view():
    processor = MageImageProcessor()
    assert processor.do_resize and processor.do_center_crop and processor.do_rescale and processor.do_convert_rgb
    assert dict(processor.size) == {"shortest_edge": 256}
    assert dict(processor.crop_size) == {"height": 256, "width": 256}
    assert processor.resample == PIL.Image.Resampling.BICUBIC
    assert processor.rescale_factor == pytest.approx(1 / 255)
    assert not processor.do_normalize
    assert processor.model_input_names == ["pixel_values"]
    config = processor.to_dict()
    assert config.get("do_normalize", False) is False
    assert "image_mean" not in config and "image_std" not in config


def test_constructor_and_for_image_size_agree():
    by_kwargs = MageImageProcessor(size={"shortest_edge": S}, crop_size={"height": S, "width": S})
    assert by_kwargs.to_dict() == MageImageProcessor.for_image_size(S).to_dict()
    assert dict(MageImageProcessor(size=S).size) == {"shortest_edge": S}  # an int size means the shortest edge


@pytest.mark.parametrize("bad", [0, -4, 2.5, True, "32"])
def test_for_image_size_rejects_non_positive_ints(bad):
    with pytest.raises(ValueError, match="image_size"):
        MageImageProcessor.for_image_size(bad)


def test_pil_image(processor):
    image = PIL.Image.fromarray(random_uint8(40, 48))
    check_pixels(processor(image, return_tensors="pt")["pixel_values"], batch=1)


def test_numpy_hwc_uint8_and_chw(processor):
    array = random_uint8(40, 48)
    hwc = processor(array, return_tensors="pt")["pixel_values"]
    chw = processor(np.ascontiguousarray(array.transpose(2, 0, 1)), return_tensors="pt")["pixel_values"]
    check_pixels(hwc, batch=1)
    torch.testing.assert_close(hwc, chw, rtol=0, atol=0)
    # The same pixels as a PIL image give the same result.
    pil = processor(PIL.Image.fromarray(array), return_tensors="pt")["pixel_values"]
    torch.testing.assert_close(hwc, pil, rtol=0, atol=0)


def test_numpy_return_type(processor):
    out = processor(random_uint8(S, S), return_tensors="np")["pixel_values"]
    assert isinstance(out, np.ndarray) and out.shape == (1, 3, S, S) and out.dtype == np.float32


def test_no_return_tensors_gives_list_of_chw_arrays(processor):
    out = processor([random_uint8(S, S), random_uint8(40, 40)])["pixel_values"]
    assert isinstance(out, list) and len(out) == 2
    assert all(isinstance(x, np.ndarray) and x.shape == (3, S, S) and x.dtype == np.float32 for x in out)


def test_torch_float_tensor_is_not_rescaled(processor):
    chw = torch.rand(3, S, S)
    out = processor(chw, return_tensors="pt")["pixel_values"]
    check_pixels(out, batch=1)
    torch.testing.assert_close(out[0], chw, rtol=0, atol=0)


def test_torch_batch_uint8_and_float(processor):
    batch = torch.from_numpy(np.stack([random_uint8(S, S, seed=i) for i in range(3)])).permute(0, 3, 1, 2)
    out = processor(batch, return_tensors="pt")["pixel_values"]
    check_pixels(out, batch=3)
    torch.testing.assert_close(out, batch.float() / 255, rtol=0, atol=1e-7)
    # Float batches of another size are resized and cropped.
    check_pixels(processor(torch.rand(2, 3, 40, 50), return_tensors="pt")["pixel_values"], batch=2)


def test_tensor_with_grad_half_precision_and_bfloat16(processor):
    image = torch.rand(3, S, S, requires_grad=True)
    check_pixels(processor(image, return_tensors="pt")["pixel_values"], batch=1)
    for dtype in (torch.float16, torch.bfloat16):
        check_pixels(processor(torch.rand(3, 40, 36).to(dtype), return_tensors="pt")["pixel_values"], batch=1)


def test_float_image_resize_stays_in_unit_range(processor):
    # A hard edge makes bicubic overshoot; the result is clipped to [0, 1].
    image = np.zeros((64, 64, 3), dtype=np.float32)
    image[:, 32:] = 1.0
    out = processor(image, return_tensors="pt")["pixel_values"]
    check_pixels(out, batch=1)
    assert out.max() == 1.0 and out.min() == 0.0


def test_mixed_batched_list(processor):
    images = [
        PIL.Image.fromarray(random_uint8(50, 40)),
        random_uint8(S, 45),
        torch.rand(3, 36, 36),
        np.random.default_rng(1).random((S, S, 3)).astype(np.float64),
    ]
    check_pixels(processor(images, return_tensors="pt")["pixel_values"], batch=4)
    # A nested list is flattened.
    check_pixels(processor([images[:2], images[2:]], return_tensors="pt")["pixel_values"], batch=4)


@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "1", "LA", "CMYK"])
def test_pil_modes_become_rgb(processor, mode):
    image = PIL.Image.fromarray(random_uint8(S, S)).convert(mode)
    out = processor(image, return_tensors="pt")["pixel_values"]
    check_pixels(out, batch=1)
    expected = torch.from_numpy(np.array(image.convert("RGB"))).permute(2, 0, 1).float() / 255
    torch.testing.assert_close(out[0], expected, rtol=0, atol=1e-7)


def test_grayscale_arrays_become_three_channels(processor):
    gray = random_uint8(S, S, channels=0)
    for image in (gray, gray[..., None], gray[None], torch.from_numpy(gray)):
        out = processor(image, return_tensors="pt")["pixel_values"]
        check_pixels(out, batch=1)
        torch.testing.assert_close(out[0, 0], torch.from_numpy(gray).float() / 255, rtol=0, atol=1e-7)
        assert torch.equal(out[0, 0], out[0, 1]) and torch.equal(out[0, 0], out[0, 2])


def test_rgba_array_drops_alpha(processor):
    rgba = random_uint8(S, S, channels=4)
    out = processor(rgba, return_tensors="pt")["pixel_values"]
    check_pixels(out, batch=1)
    torch.testing.assert_close(out[0], torch.from_numpy(rgba[..., :3]).permute(2, 0, 1).float() / 255)


def test_channels_pass_through_without_rgb_conversion(processor):
    """`do_convert_rgb=False` keeps any channel count (transformers' `test_call_numpy_4_channels`); each channel is
    processed as it would be inside an RGB image."""
    rgba = random_uint8(40, 52, channels=4)
    out = processor(rgba, do_convert_rgb=False, return_tensors="pt")["pixel_values"]
    assert out.shape == (1, 4, S, S)
    rgb = processor(np.ascontiguousarray(rgba[..., :3]), return_tensors="pt")["pixel_values"]
    torch.testing.assert_close(out[:, :3], rgb, rtol=0, atol=0)
    alpha = processor(np.ascontiguousarray(rgba[..., 3]), return_tensors="pt")["pixel_values"]
    torch.testing.assert_close(out[:, 3], alpha[:, 0], rtol=0, atol=0)
    pil = processor(PIL.Image.fromarray(rgba), do_convert_rgb=False, return_tensors="pt")["pixel_values"]
    torch.testing.assert_close(pil, out, rtol=0, atol=0)
    for image, channels in [(random_uint8(S, S, channels=0), 1), (torch.rand(1, 40, 40), 1),
                            (PIL.Image.new("LA", (40, 36)), 2), (np.random.default_rng(0).random((5, 36, 40)), 5)]:
        out = processor(image, do_convert_rgb=False, input_data_format="channels_first" if channels == 5 else None,
                        return_tensors="pt")["pixel_values"]
        assert out.shape == (1, channels, S, S) and 0.0 <= out.min() and out.max() <= 1.0


def test_center_crop_rounds_offsets_like_torchvision(processor):
    """Offsets `round((H - crop) / 2)` as torchvision's `CenterCrop` (Python rounding: 3.5 -> 4, 2.5 -> 2), where
    transformers floors them; smaller images are padded `d // 2` before and the rest after."""
    image = np.arange(39 * 37, dtype=np.float32).reshape(1, 39, 37)
    cropped = processor.center_crop(image, SizeDict(height=32, width=32))
    np.testing.assert_array_equal(cropped, image[:, 4:36, 2:34])  # (39 - 32) / 2 = 3.5, (37 - 32) / 2 = 2.5
    padded = processor.center_crop(np.ones((1, 3, 4), dtype=np.float32), SizeDict(height=6, width=8))
    np.testing.assert_array_equal(padded[0].sum(1), [0, 4, 4, 4, 0, 0])
    np.testing.assert_array_equal(padded[0].sum(0), [0, 0, 3, 3, 3, 3, 0, 0])


def test_for_evaluation_is_the_original_eval_transform():
    """main_linprobe.py: `Resize(292, interpolation=3)`, `CenterCrop(256)`, `ToTensor()`; 292 = int(256 / 0.875)."""
    processor = MageImageProcessor.for_evaluation()
    assert dict(processor.size) == {"shortest_edge": 292}
    assert dict(processor.crop_size) == {"height": 256, "width": 256}
    assert dict(MageImageProcessor.for_evaluation(32).size) == {"shortest_edge": 36}
    assert dict(MageImageProcessor.for_evaluation(224).size) == {"shortest_edge": 256}
    assert processor.to_dict() == MageImageProcessor.for_image_size(256, crop_fraction=0.875).to_dict()
    array = random_uint8(300, 400)  # shortest edge 300 -> 292, long edge int(292 * 400 / 300) = 389
    out = processor(PIL.Image.fromarray(array), return_tensors="np")["pixel_values"][0]
    resized = np.asarray(PIL.Image.fromarray(array).resize((389, 292), resample=PIL.Image.Resampling.BICUBIC))
    top, left = round((292 - 256) / 2), round((389 - 256) / 2)
    expected = resized[top : top + 256, left : left + 256].transpose(2, 0, 1).astype(np.float32) / 255
    np.testing.assert_allclose(out, expected, rtol=0, atol=1e-7)
    with pytest.raises(ValueError, match="crop_fraction"):
        MageImageProcessor.for_image_size(256, crop_fraction=1.5)


def test_non_square_image_resize_and_center_crop(processor):
    """A 100x60 (width x height) image: shortest edge 60 -> 32, width int(32 * 100 / 60) = 53, then the center
    32x32 crop with torchvision's rounded offsets."""
    array = random_uint8(60, 100)
    out = processor(PIL.Image.fromarray(array), return_tensors="pt")["pixel_values"]
    assert out.shape == (1, 3, S, S)
    resized = PIL.Image.fromarray(array).resize((53, S), resample=PIL.Image.Resampling.BICUBIC)
    left = round((53 - S) / 2.0)
    expected = np.asarray(resized)[:, left : left + S].transpose(2, 0, 1).astype(np.float32) / 255
    pil_exact = type(processor) is MageImageProcessor  # the torch backend is PIL's within grey levels (below)
    np.testing.assert_allclose(out[0].numpy(), expected, rtol=0, atol=1e-7 if pil_exact else 0.1)
    # Portrait orientation works the same way.
    assert processor(random_uint8(100, 60), return_tensors="pt")["pixel_values"].shape == (1, 3, S, S)


def test_same_size_uint8_is_only_divided_by_255(processor):
    array = random_uint8(S, S)
    out = processor(array, return_tensors="np")["pixel_values"][0]
    np.testing.assert_allclose(out, array.transpose(2, 0, 1).astype(np.float32) / 255, rtol=0, atol=1e-7)
    assert out.max() > 0.9 and out.min() < 0.1  # no mean/std shift


def test_small_image_is_upscaled(processor):
    check_pixels(processor(random_uint8(8, 12), return_tensors="pt")["pixel_values"], batch=1)


def test_crop_larger_than_resized_image_pads_with_zeros():
    processor = MageImageProcessor(size={"shortest_edge": 8}, crop_size={"height": 12, "width": 12})
    out = processor(np.full((8, 8, 3), 255, dtype=np.uint8), return_tensors="np")["pixel_values"][0]
    assert out.shape == (3, 12, 12)
    assert out[:, 2:10, 2:10].min() == 1.0 and out[:, :2].max() == 0.0 and out[:, :, 10:].max() == 0.0


def test_height_width_size_and_call_time_overrides(processor):
    array = random_uint8(40, 60)
    out = processor(array, size={"height": 20, "width": 30}, do_center_crop=False, return_tensors="pt")
    assert out["pixel_values"].shape == (1, 3, 20, 30)
    out = processor(array, do_resize=False, crop_size={"height": 16, "width": 24}, return_tensors="pt")
    assert out["pixel_values"].shape == (1, 3, 16, 24)


def test_channels_last_data_format(processor):
    out = processor(random_uint8(S, S), data_format="channels_last", return_tensors="np")["pixel_values"]
    assert out.shape == (1, S, S, 3)


def test_do_rescale_false_accepts_unit_range_floats(processor):
    image = np.random.default_rng(0).random((S, S, 3)).astype(np.float32)
    out = processor(image, do_rescale=False, return_tensors="np")["pixel_values"][0]
    np.testing.assert_allclose(out, image.transpose(2, 0, 1), rtol=0, atol=0)


def test_save_and_load_round_trip(processor, tmp_path):
    processor.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "preprocessor_config.json").read_text())
    assert saved["image_processor_type"] == "MageImageProcessor"
    assert saved["size"] == {"shortest_edge": S} and saved["crop_size"] == {"height": S, "width": S}
    assert saved.get("do_normalize", False) is False
    loaded = type(processor).from_pretrained(tmp_path)  # one saved type for both backends, as transformers' own
    assert loaded.to_dict() == processor.to_dict()
    images = [PIL.Image.fromarray(random_uint8(60, 100)), torch.rand(3, 40, 40)]
    torch.testing.assert_close(
        loaded(images, return_tensors="pt")["pixel_values"],
        processor(images, return_tensors="pt")["pixel_values"],
        rtol=0,
        atol=0,
    )


class _DummyMageImageProcessorConfig(PreTrainedConfig):
    model_type = "mage-image-processing-test"


def test_auto_image_processor_loads_registered_class(tmp_path):
    processor = MageImageProcessor.for_image_size(S)
    AutoImageProcessor.register(_DummyMageImageProcessorConfig, MageImageProcessor, exist_ok=True)
    processor.save_pretrained(tmp_path)
    loaded = AutoImageProcessor.from_pretrained(tmp_path)
    assert type(loaded) is MageImageProcessor
    image = random_uint8(60, 100)
    torch.testing.assert_close(
        loaded(image, return_tensors="pt")["pixel_values"],
        processor(image, return_tensors="pt")["pixel_values"],
        rtol=0,
        atol=0,
    )


def test_postprocess_round_trip(processor):
    arrays = [random_uint8(S, S, seed=i) for i in range(2)]
    pixel_values = processor(arrays, return_tensors="pt")["pixel_values"]

    pil = processor.postprocess(pixel_values, output_type="pil")
    assert len(pil) == 2 and all(isinstance(im, PIL.Image.Image) and im.mode == "RGB" for im in pil)
    for image, array in zip(pil, arrays):
        np.testing.assert_array_equal(np.asarray(image), array)

    as_np = processor.postprocess(pixel_values, output_type="np")
    assert isinstance(as_np, np.ndarray) and as_np.shape == (2, S, S, 3) and as_np.dtype == np.float32
    np.testing.assert_allclose(as_np, pixel_values.permute(0, 2, 3, 1).numpy())

    as_pt = processor.postprocess(pixel_values, output_type="pt")
    assert isinstance(as_pt, torch.Tensor) and as_pt.shape == (2, 3, S, S) and as_pt.dtype == torch.float32
    torch.testing.assert_close(as_pt, pixel_values)
    assert processor.postprocess_images(pixel_values, output_type="pt").shape == (2, 3, S, S)


def test_postprocess_other_channel_counts(processor):
    gray, rgba = torch.rand(2, 1, 8, 8), torch.rand(1, 4, 8, 6)
    images = processor.postprocess(gray)
    assert [image.mode for image in images] == ["L", "L"] and images[0].size == (8, 8)
    np.testing.assert_array_equal(np.asarray(images[1]), (gray[1, 0].numpy() * 255).round().astype(np.uint8))
    (image,) = processor.postprocess(rgba)
    assert image.mode == "RGBA" and image.size == (6, 8)
    np.testing.assert_array_equal(np.asarray(image), (rgba[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8))
    assert processor.postprocess(torch.rand(2, 5, 8, 8), output_type="np").shape == (2, 8, 8, 5)


def test_postprocess_clips_and_accepts_numpy_and_single_images(processor):
    wild = torch.linspace(-2, 3, 3 * 8 * 8).reshape(3, 8, 8)
    out = processor.postprocess(wild, output_type="pt")
    assert out.shape == (1, 3, 8, 8) and out.min() == 0.0 and out.max() == 1.0
    out = processor.postprocess(wild.numpy()[None].astype(np.float64), output_type="np")
    assert out.shape == (1, 8, 8, 3) and out.dtype == np.float32 and out.min() == 0.0 and out.max() == 1.0


@pytest.mark.parametrize(
    "images, error, match",
    [
        ("cat.png", TypeError, "images.*got str"),
        (None, TypeError, "images.*NoneType"),
        (42, TypeError, "images.*int"),
        ([], ValueError, "images.*empty"),
        ([PIL.Image.new("RGB", (4, 4)), "x"], TypeError, "images"),
        (np.zeros((10, 10, 5), dtype=np.uint8), ValueError, "images.*channel"),
        (np.zeros((4, 5, 6, 7), dtype=np.uint8), ValueError, "images.*channel"),
        (np.zeros((2, 3, 4, 5, 6), dtype=np.float32), ValueError, "images.*batch"),
        (np.zeros(16, dtype=np.uint8), ValueError, "images"),
        (np.full((8, 8, 3), 255.0, dtype=np.float32), ValueError, r"images.*\[0, 1\]"),
        (np.full((8, 8, 3), -0.5, dtype=np.float32), ValueError, r"images.*\[0, 1\]"),
        (torch.full((3, 8, 8), float("nan")), ValueError, r"images.*\[0, 1\]"),
        (np.zeros((8, 8, 3), dtype=np.complex64), TypeError, "images.*dtype"),
        (np.zeros((0, 8, 3), dtype=np.uint8), ValueError, "images.*non-zero"),
        ([[[PIL.Image.new("RGB", (4, 4))]]], ValueError, "images.*list"),
    ],
)
def test_bad_images_raise(processor, images, error, match):
    with pytest.raises(error, match=match):
        processor(images, return_tensors="pt")


def test_bad_settings_raise(processor):
    with pytest.raises(ValueError, match="do_normalize"):
        MageImageProcessor(do_normalize=True)
    with pytest.raises(ValueError, match="do_normalize"):
        processor(random_uint8(S, S), do_normalize=True)
    with pytest.raises(ValueError, match="size"):
        MageImageProcessor(size={"longest_edge": 32})
    with pytest.raises(ValueError, match="crop_size"):
        processor(random_uint8(S, S), crop_size={"height": 0, "width": 8})
    with pytest.raises(ValueError, match="do_rescale"):
        processor(random_uint8(S, S), do_rescale=False)  # uint8 values 0..255 are not in [0, 1]
    with pytest.raises(ValueError, match="images.*channels"):  # 5 channels cannot become RGB
        processor(random_uint8(S, S, channels=5), input_data_format="channels_last")
    with pytest.raises(ValueError, match="images.*input_data_format"):  # 5 channels are not found by themselves
        processor(random_uint8(S, S, channels=5), do_convert_rgb=False)
    with pytest.raises(ValueError, match="images.*shapes"):
        processor([random_uint8(S, S), random_uint8(20, 20)], do_resize=False, do_center_crop=False,
                  return_tensors="pt")


def test_bad_postprocess_arguments_raise(processor):
    with pytest.raises(ValueError, match="output_type"):
        processor.postprocess(torch.rand(1, 3, 4, 4), output_type="latent")
    with pytest.raises(ValueError, match="images.*PIL"):
        processor.postprocess(torch.rand(1, 2, 4, 4))
    with pytest.raises(ValueError, match="images"):
        processor.postprocess(torch.rand(4, 4))
    with pytest.raises(TypeError, match="images"):
        processor.postprocess([torch.rand(3, 4, 4)])
    with pytest.raises(TypeError, match="images"):
        processor.postprocess(torch.ones(1, 3, 4, 4, dtype=torch.long))


# ---------------------------------------------------------------------------------------------------------------
# Reference fixture: the outputs of the processor as it was before its rewrite (git 7ffee31), on a deterministic set
# of inputs. Regenerate with `python tests/test_image_processing.py` (only when a behaviour change is intended).

REFERENCE_FIXTURE = Path(__file__).parent / "data" / "image_processor_reference.safetensors"

# Processors under test: name -> constructor keyword arguments (for_image_size(n) is {"size": n, "crop_size": n}).
REFERENCE_PROCESSORS = {
    "default": {},
    "image_size_32": {"size": {"shortest_edge": 32}, "crop_size": {"height": 32, "width": 32}},
    "image_size_256": {"size": {"shortest_edge": 256}, "crop_size": {"height": 256, "width": 256}},
    "height_width": {"size": {"height": 20, "width": 27}, "crop_size": {"height": 15, "width": 24}},
    "odd_crop": {"size": {"shortest_edge": 37}, "crop_size": {"height": 30, "width": 33}},
    "pad": {"size": {"shortest_edge": 9}, "crop_size": {"height": 14, "width": 12}},
}
# Extra call-time keyword arguments, tried with the "image_size_32" processor on every input they apply to.
REFERENCE_CALLS = {
    "no_resize": {"do_resize": False},
    "no_crop": {"do_center_crop": False, "size": {"height": 21, "width": 18}},
    "channels_last": {"data_format": "channels_last"},
}


def pattern(shape: tuple[int, ...], seed: int) -> np.ndarray:
    """Deterministic uint8 texture (pure integer arithmetic, no random generator): edges, gradients and noise-like
    high frequencies."""
    index = np.indices(shape).reshape(len(shape), -1).astype(np.int64)
    weights = np.array([37, 91, 53, 17][: len(shape)]) + seed
    values = weights @ index + (index[0] * index[-1] + seed) % 13 * 19 + (index[0] // 5) * 41
    return (values % 256).astype(np.uint8).reshape(shape)


def unit_float(shape: tuple[int, ...], seed: int, dtype=np.float32) -> np.ndarray:
    """Deterministic floats strictly inside (0, 1), off the k/255 grid."""
    return ((pattern(shape, seed).astype(np.float64) + 0.5) / 256).astype(dtype)


def _palette_image(height: int, width: int, seed: int, transparency: bool) -> PIL.Image.Image:
    image = PIL.Image.fromarray(pattern((height, width), seed) % 16, mode="P")
    image.putpalette(pattern((16, 3), seed + 1).reshape(-1).tolist())
    if transparency:
        image.info["transparency"] = 3
    return image


@functools.cache
def reference_inputs() -> dict[str, Any]:
    """name -> input of the processor. Sizes: smaller than, equal to and larger than the crops; portrait, landscape,
    odd; every input type and layout the processor reads."""
    rgb = lambda h, w, seed: PIL.Image.fromarray(pattern((h, w, 3), seed))  # noqa: E731
    return {
        "pil_rgb_40x48": rgb(40, 48, 0),
        "pil_rgb_32x32": rgb(32, 32, 1),
        "pil_rgb_256x256": rgb(256, 256, 2),
        "pil_rgb_260x300": rgb(260, 300, 3),
        "pil_rgb_61x27_portrait": rgb(61, 27, 4),
        "pil_rgb_5x7_small": rgb(5, 7, 5),
        "pil_l_33x45": PIL.Image.fromarray(pattern((33, 45), 6)),
        "pil_la_29x30": PIL.Image.merge("LA", [PIL.Image.fromarray(pattern((29, 30), s)) for s in (7, 8)]),
        "pil_rgba_35x50": PIL.Image.fromarray(pattern((35, 50, 4), 9)),
        "pil_p_29x37": _palette_image(29, 37, 10, transparency=False),
        "pil_p_transparent_41x31": _palette_image(41, 31, 11, transparency=True),
        "pil_cmyk_34x34": rgb(34, 34, 12).convert("CMYK"),
        "pil_1_36x28": rgb(36, 28, 13).convert("1"),
        "np_uint8_hwc_45x30": pattern((45, 30, 3), 14),
        "np_uint8_chw_29x50": pattern((3, 29, 50), 15),
        "np_uint8_hw_33x21": pattern((33, 21), 16),
        "np_uint8_hw1_20x24": pattern((20, 24, 1), 17),
        "np_uint8_rgba_24x36": pattern((24, 36, 4), 18),
        "np_float32_hwc_37x53": unit_float((37, 53, 3), 19),
        "np_float64_hwc_30x30": unit_float((30, 30, 3), 20, np.float64),
        "np_float32_edge_64x64": np.repeat((np.arange(64) >= 32).astype(np.float32)[None, :, None], 64, 0).repeat(3, 2),
        "pt_uint8_chw_41x35": torch.from_numpy(pattern((3, 41, 35), 21)),
        "pt_float_chw_44x39": torch.from_numpy(unit_float((3, 44, 39), 22)),
        "pt_float16_chw_32x32": torch.from_numpy(unit_float((3, 32, 32), 23)).half(),
        "pt_uint8_bchw_2x34x36": torch.from_numpy(pattern((2, 3, 34, 36), 24)),
        "pt_float_bchw_2x30x47": torch.from_numpy(unit_float((2, 3, 30, 47), 25)),
        "list_mixed": [rgb(50, 40, 26), pattern((32, 45, 3), 27), torch.from_numpy(unit_float((3, 36, 36), 28))],
        "nested_list": [[rgb(38, 44, 29), PIL.Image.fromarray(pattern((27, 33), 30))], [pattern((3, 31, 31), 31)]],
    }


def _input_digest(image: Any) -> str:
    """SHA-256 over an input's pixels (and PIL mode/palette), to check that the recipe still builds the same inputs."""
    digest = hashlib.sha256()
    for item in image if isinstance(image, list) else [image]:
        for leaf in item if isinstance(item, list) else [item]:
            if isinstance(leaf, PIL.Image.Image):
                digest.update(f"{leaf.mode}{leaf.size}{leaf.info.get('transparency')}".encode())
                digest.update(leaf.tobytes() + bytes(leaf.getpalette() or []))
            else:
                array = leaf.numpy() if isinstance(leaf, torch.Tensor) else leaf
                digest.update(f"{array.dtype}{array.shape}".encode() + np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()


def reference_cases() -> dict[str, tuple[str, str, dict]]:
    """case name -> (processor name, input name, call keyword arguments)."""
    cases = {f"{p}/{i}": (p, i, {}) for p in REFERENCE_PROCESSORS for i in reference_inputs()}
    for call, kwargs in REFERENCE_CALLS.items():
        cases.update({f"image_size_32+{call}/{i}": ("image_size_32", i, kwargs) for i in reference_inputs()})
    return cases


def run_reference_case(processor_name: str, input_name: str, call_kwargs: dict) -> np.ndarray:
    processor = MageImageProcessor(**REFERENCE_PROCESSORS[processor_name])
    images = reference_inputs()[input_name]
    pixel_values = processor(images, return_tensors="np", **call_kwargs)["pixel_values"]
    return np.ascontiguousarray(pixel_values)


def _summary(output: np.ndarray) -> dict[str, np.ndarray]:
    """What the fixture keeps of one output: its shape, SHA-256 of its float32 bytes (exact equality), and every
    `step`-th value (so that a mismatch shows where and by how much; the full outputs would be megabytes)."""
    flat = output.reshape(-1)
    step = max(1, flat.size // 96)
    return {
        "shape": np.array(output.shape, dtype=np.int64),
        "sha256": np.frombuffer(hashlib.sha256(output.astype(np.float32).tobytes()).digest(), dtype=np.uint8),
        "sample": flat[::step].astype(np.float32),
    }


def write_reference_fixture(path: Path = REFERENCE_FIXTURE) -> None:
    import PIL as pillow
    from safetensors.numpy import save_file

    tensors, recipe = {}, {}
    inputs = reference_inputs()
    for name, (processor_name, input_name, call_kwargs) in reference_cases().items():
        output = run_reference_case(processor_name, input_name, call_kwargs)
        tensors.update({f"{name}/{key}": value for key, value in _summary(output).items()})
        recipe[name] = {"processor": processor_name, "input": input_name, "call": call_kwargs}
    metadata = {
        "recipe": json.dumps(recipe),
        "processors": json.dumps(REFERENCE_PROCESSORS),
        "input_sha256": json.dumps({name: _input_digest(image) for name, image in inputs.items()}),
        "versions": json.dumps({"pillow": pillow.__version__, "numpy": np.__version__}),
    }
    save_file(tensors, str(path), metadata=metadata)


def test_reference_inputs_are_reproducible():
    from safetensors import safe_open

    with safe_open(str(REFERENCE_FIXTURE), framework="np") as fixture:
        expected = json.loads(fixture.metadata()["input_sha256"])
    assert {name: _input_digest(image) for name, image in reference_inputs().items()} == expected


def test_outputs_match_reference_fixture():
    """Every case gives bit-for-bit the float32 output of the pre-rewrite processor."""
    from safetensors import safe_open
    from safetensors.numpy import load_file

    with safe_open(str(REFERENCE_FIXTURE), framework="np") as fixture:
        recipe = json.loads(fixture.metadata()["recipe"])
    stored = load_file(str(REFERENCE_FIXTURE))
    mismatches = []
    for name, case in recipe.items():
        output = run_reference_case(case["processor"], case["input"], case["call"])
        expected = {key: stored[f"{name}/{key}"] for key in ("shape", "sha256", "sample")}
        actual = _summary(output)
        if tuple(actual["shape"]) != tuple(expected["shape"]):
            mismatches.append(f"{name}: shape {tuple(actual['shape'])} != {tuple(expected['shape'])}")
        elif not np.array_equal(actual["sha256"], expected["sha256"]):
            max_diff = float(np.abs(actual["sample"] - expected["sample"]).max())
            mismatches.append(f"{name}: values differ (max difference over the stored sample {max_diff:.3g})")
    assert not mismatches, "\n".join(mismatches)


if __name__ == "__main__":
    write_reference_fixture()
    print(f"wrote {REFERENCE_FIXTURE} ({REFERENCE_FIXTURE.stat().st_size} bytes)")


# ---------------------------------------------------------------------------------------------------------------
# The torch backend against the PIL one
# ---------------------------------------------------------------------------------------------------------------


def equivalence_inputs() -> list:
    rows, cols = np.mgrid[0:300, 0:400]
    smooth = np.stack([cols * 255 / 400, rows * 255 / 300, (rows + cols) % 256], -1).astype(np.uint8)
    rng = np.random.default_rng(1)
    return [PIL.Image.fromarray(smooth), PIL.Image.fromarray(random_uint8(40, 30)), random_uint8(64, 48),
            rng.random((3, 50, 70)).astype(np.float32), torch.rand(2, 3, 20, 20, generator=torch.Generator().manual_seed(0))]


@pytest.mark.parametrize("size", [S, 256])
def test_torch_backend_agrees_with_pil(size):
    """Within transformers' backend-equivalence tolerance (atol 0.1, mean 5e-3): floats to 1e-5; uint8 to a few grey
    levels on average (PIL rounds to uint8 between its two resampling passes, torch does not)."""
    pil, torch_backend = MageImageProcessor.for_image_size(size), MageImageProcessorTorch.for_image_size(size)
    for images in equivalence_inputs():
        expected = pil(images, return_tensors="pt").pixel_values
        got = torch_backend(images, return_tensors="pt").pixel_values
        assert got.shape == expected.shape and got.dtype == expected.dtype == torch.float32
        difference = (got - expected).abs()
        floats = isinstance(images, torch.Tensor) or getattr(images, "dtype", None) == np.float32
        assert difference.max() <= (1e-5 if floats else 0.1) and difference.mean() <= 5e-3


def test_auto_image_processor_backends(tmp_path):
    MageImageProcessor.for_image_size(S).save_pretrained(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "mage"}))
    fast = AutoImageProcessor.from_pretrained(tmp_path, backend="torchvision")
    assert type(fast) is MageImageProcessorTorch and fast.backend == "torch"
    assert type(AutoImageProcessor.from_pretrained(tmp_path, backend="pil")) is MageImageProcessor
    fast.save_pretrained(tmp_path / "fast")
    (tmp_path / "fast" / "config.json").write_text(json.dumps({"model_type": "mage"}))
    reloaded = AutoImageProcessor.from_pretrained(tmp_path / "fast", backend="torchvision")
    assert type(reloaded) is MageImageProcessorTorch and reloaded.to_dict() == fast.to_dict()
    assert "device" not in json.loads((tmp_path / "fast" / "preprocessor_config.json").read_text())


def test_torch_backend_refuses_resample_it_does_not_have():
    with pytest.raises(ValueError, match="resample"):
        MageImageProcessorTorch.for_image_size(S, resample=PIL.Image.Resampling.LANCZOS)(random_uint8(40, 40))
