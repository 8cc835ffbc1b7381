"""MagePipeline: generation modes, guidance, editing, save/load, golden network calls and errors."""

from __future__ import annotations

import numpy as np
import PIL.Image
import pytest
import torch

from mage_hf import MageConfig, MageForMaskedImageModeling, MagePipeline, MageScheduler, MageVQModel
from conftest import assert_close

NUM_CLASSES = 10


def _seed(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.fixture(scope="module")
def golden_pipe(golden_mim_model) -> MagePipeline:
    pipe = MagePipeline.from_masked_image_model(golden_mim_model)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def conditional_pipe() -> MagePipeline:
    """A small random class-conditional model (another shape than the golden one)."""
    torch.manual_seed(0)
    config = MageConfig.from_preset(
        "tiny", num_condition_classes=NUM_CLASSES, id2label={i: f"digit {i}" for i in range(NUM_CLASSES)},
        num_labels=NUM_CLASSES,
    )
    model = MageForMaskedImageModeling(config).eval()
    pipe = MagePipeline.from_masked_image_model(model)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_pipeline_components(golden_pipe):
    assert isinstance(golden_pipe.vqvae, MageVQModel)
    assert isinstance(golden_pipe.scheduler, MageScheduler)
    assert golden_pipe.transformer.mage.vqgan is None  # the transformer does not carry a tokenizer copy
    assert golden_pipe.scheduler.config.mask_token_id == golden_pipe.transformer.config.mask_token_id


@torch.no_grad()
def test_golden_generation_steps_through_the_pipeline(golden, golden_pipe):
    """The pipeline's network call on the original's step inputs reproduces the original's logits."""
    fake = golden.meta["fake_class_label"]
    for step, ids in enumerate(golden.tensors["gen_step_input_ids"]):
        assert (ids[:, 0] == fake).all()
        condition = golden_pipe.prepare_condition_ids(None, ids.shape[0], 1, ids.device)
        golden_pipe._guidance_scale = 1.0
        logits = golden_pipe.predict_logits(ids[:, 1:], condition, guidance=1.0)
        assert_close(logits, golden.tensors["gen_step_logits"][step], name=f"pipeline step {step}")
    images = golden_pipe.decode_tokens(golden.tensors["gen_final_ids"], "pt")
    assert_close(images, golden.tensors["gen_images"].clamp(0, 1), name="decoded")


def test_unconditional_generation_shapes_and_range(golden, golden_pipe):
    steps = golden.meta["gen_steps"]
    size = golden.meta["img_size"]
    pt = golden_pipe(batch_size=3, num_inference_steps=steps, generator=_seed(), output_type="pt").images
    assert pt.shape == (3, 3, size, size) and pt.dtype == torch.float32
    assert pt.min() >= 0 and pt.max() <= 1
    array = golden_pipe(batch_size=2, num_inference_steps=steps, generator=_seed(), output_type="np").images
    assert array.shape == (2, size, size, 3) and 0 <= array.min() and array.max() <= 1
    pil = golden_pipe(num_inference_steps=steps, generator=_seed()).images
    assert len(pil) == 1 and isinstance(pil[0], PIL.Image.Image) and pil[0].size == (size, size)
    ids = golden_pipe(batch_size=2, num_inference_steps=steps, generator=_seed(), output_type="latent").images
    assert ids.shape == (2, golden_pipe.transformer.config.num_image_tokens)
    assert int(ids.max()) < golden.codebook_size  # every token decoded, none left masked
    as_tuple = golden_pipe(batch_size=1, num_inference_steps=steps, generator=_seed(), return_dict=False)
    assert isinstance(as_tuple, tuple) and len(as_tuple[0]) == 1


def test_same_generator_same_images(golden_pipe):
    a = golden_pipe(batch_size=2, num_inference_steps=4, generator=_seed(3), output_type="latent").images
    b = golden_pipe(batch_size=2, num_inference_steps=4, generator=_seed(3), output_type="latent").images
    c = golden_pipe(batch_size=2, num_inference_steps=4, generator=_seed(4), output_type="latent").images
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_per_sample_generators(golden_pipe):
    pair = golden_pipe(batch_size=2, num_inference_steps=4, generator=[_seed(5), _seed(6)], output_type="latent")
    alone = golden_pipe(batch_size=1, num_inference_steps=4, generator=[_seed(6)], output_type="latent")
    assert torch.equal(pair.images[1], alone.images[0])


def test_callback_sees_every_step(golden_pipe):
    seen = []

    def callback(pipe, step_index, timestep, tensors):
        seen.append((step_index, int((tensors["sample_ids"] == pipe.transformer.config.mask_token_id).sum())))
        return tensors

    golden_pipe(
        num_inference_steps=4, generator=_seed(), callback_on_step_end=callback,
        callback_on_step_end_tensor_inputs=["sample_ids"], output_type="latent",
    )
    assert [s for s, _ in seen] == [0, 1, 2, 3]
    masked = [m for _, m in seen]
    assert masked == sorted(masked, reverse=True) and masked[-1] == 0


def test_class_conditional_generation_and_names(conditional_pipe):
    by_index = conditional_pipe(class_label=[3, 7], num_inference_steps=4, generator=_seed(), output_type="latent")
    by_name = conditional_pipe(
        class_label=["digit 3", "digit 7"], num_inference_steps=4, generator=_seed(), output_type="latent"
    )
    assert torch.equal(by_index.images, by_name.images)
    assert conditional_pipe.get_label_ids(["digit 9"]) == [9]
    many = conditional_pipe(class_label=2, num_images_per_prompt=3, num_inference_steps=4, generator=_seed(),
                            output_type="pt")
    assert many.images.shape[0] == 3


def test_guidance_changes_output_with_one_batched_forward_per_step(conditional_pipe):
    calls = []
    hook = conditional_pipe.transformer.register_forward_hook(
        lambda module, args, kwargs, output: calls.append(kwargs["input_ids"].shape[0]), with_kwargs=True
    )
    try:
        plain = conditional_pipe(class_label=[1, 2], num_inference_steps=4, generator=_seed(), output_type="latent")
        assert calls == [2] * 4
        calls.clear()
        guided = conditional_pipe(
            class_label=[1, 2], num_inference_steps=4, guidance_scale=4.0, generator=_seed(), output_type="latent"
        )
        assert calls == [4] * 4  # cond + uncond rows in one forward per step
        ramped = conditional_pipe(
            class_label=[1, 2], num_inference_steps=4, guidance_scale=4.0, guidance_schedule="linear",
            generator=_seed(), output_type="latent",
        )
    finally:
        hook.remove()
    assert not torch.equal(plain.images, guided.images)
    assert not torch.equal(guided.images, ramped.images)


def test_guidance_ramp_values(conditional_pipe):
    conditional_pipe._guidance_scale, conditional_pipe._num_timesteps = 3.0, 4
    assert conditional_pipe._guidance_at(0, "constant") == 3.0
    ramp = [conditional_pipe._guidance_at(i, "linear") for i in range(4)]
    assert ramp == sorted(ramp) and ramp[-1] == pytest.approx(3.0) and ramp[0] > 1.0
    # step 0 of 4: cos(pi/8) of the tokens stay masked -> scale 1 + 2 * (1 - cos(pi/8))
    assert ramp[0] == pytest.approx(1 + 2 * (1 - np.cos(np.pi / 8)))


def _digit_image(size: int) -> PIL.Image.Image:
    array = np.zeros((size, size, 3), dtype=np.uint8)
    array[size // 4: 3 * size // 4, size // 3: 2 * size // 3] = 255
    return PIL.Image.fromarray(array)


def test_inpainting_keeps_unmasked_tokens(golden_pipe):
    size = golden_pipe.transformer.config.image_size
    factor = golden_pipe.vqvae.downsample_factor
    image = _digit_image(size)
    mask = PIL.Image.new("L", (size, size), 0)
    mask.paste(255, (0, 0, size // 2, size // 2))  # top-left quarter regenerated
    tokens = golden_pipe.vqvae.tokenize(golden_pipe.image_processor(image, return_tensors="pt")["pixel_values"])
    result = golden_pipe(image=image, mask_image=mask, num_inference_steps=4, generator=_seed(), output_type="latent")
    grid = size // factor
    region = torch.zeros(grid, grid, dtype=torch.bool)
    region[: grid // 2, : grid // 2] = True
    region = region.flatten()
    assert torch.equal(result.images[0][~region], tokens[0][~region])
    assert (result.images[0] < golden_pipe.transformer.config.codebook_size).all()
    # A mask touching a single pixel regenerates the one token whose patch holds it.
    dot = PIL.Image.new("L", (size, size), 0)
    dot.putpixel((factor + 1, 0), 255)
    start = golden_pipe.prepare_edit_mask(image, dot)
    assert start.sum() == 1 and bool(start[0, 1])


def test_strength_regenerates_a_fraction(golden_pipe):
    size = golden_pipe.transformer.config.image_size
    image = _digit_image(size)
    mask = PIL.Image.new("L", (size, size), 255)
    start = golden_pipe.prepare_latents(1, torch.device("cpu"), image, mask, strength=0.25, generator=_seed())
    fraction = (start == golden_pipe.transformer.config.mask_token_id).float().mean().item()
    assert 0.1 < fraction < 0.4


def test_outpaint_and_uncrop(golden_pipe):
    size = golden_pipe.transformer.config.image_size
    grid = golden_pipe.transformer.config.token_grid_size
    image = _digit_image(size)
    canvas, mask = golden_pipe.outpaint_canvas(image, {"left": 0, "top": 0, "right": grid // 4, "bottom": 0})
    assert canvas.size == mask.size == (size, size)
    region = golden_pipe.prepare_edit_mask(canvas, mask).view(grid, grid)
    assert region[:, -(grid // 4):].all() and not region[:, : grid - grid // 4].any()
    out = golden_pipe.outpaint(image, direction="right", fraction=0.25, num_inference_steps=4, generator=_seed(),
                               output_type="pt")
    assert out.images.shape == (1, 3, size, size)
    out = golden_pipe.uncrop(image, scale=0.5, num_inference_steps=4, generator=_seed(), output_type="np")
    assert out.images.shape == (1, size, size, 3)
    with pytest.raises(ValueError, match="direction"):
        golden_pipe.outpaint(image, direction="up")
    with pytest.raises(ValueError, match="scale"):
        golden_pipe.uncrop(image, scale=1.5)


def test_save_load_gives_same_images(tmp_path, conditional_pipe):
    expected = conditional_pipe(class_label=[4], guidance_scale=2.0, num_inference_steps=4, generator=_seed(),
                                output_type="pt").images
    conditional_pipe.save_pretrained(tmp_path)
    import json

    index = json.loads((tmp_path / "model_index.json").read_text())
    assert index["transformer"] == ["mage_hf", "MageForMaskedImageModeling"]
    assert index["vqvae"] == ["mage_hf", "MageVQModel"] and index["scheduler"] == ["mage_hf", "MageScheduler"]
    loaded = MagePipeline.from_pretrained(tmp_path)
    loaded.set_progress_bar_config(disable=True)
    again = loaded(class_label=[4], guidance_scale=2.0, num_inference_steps=4, generator=_seed(), output_type="pt")
    assert torch.equal(again.images, expected)
    assert loaded.get_label_ids("digit 4") == [4]


class TestBadInput:
    def test_class_label_out_of_range(self, conditional_pipe):
        with pytest.raises(ValueError, match="class_label"):
            conditional_pipe(class_label=NUM_CLASSES, num_inference_steps=2)
        with pytest.raises(ValueError, match="class_label"):
            conditional_pipe(class_label="cat", num_inference_steps=2)

    def test_class_label_on_unconditional_model(self, golden_pipe):
        with pytest.raises(ValueError, match="class_label"):
            golden_pipe(class_label=1, num_inference_steps=2)
        with pytest.raises(ValueError, match="guidance_scale"):
            golden_pipe(guidance_scale=3.0, num_inference_steps=2)

    @pytest.mark.parametrize("steps", [0, -1, 10_000])
    def test_num_inference_steps(self, golden_pipe, steps):
        with pytest.raises(ValueError, match="num_inference_steps"):
            golden_pipe(num_inference_steps=steps)

    @pytest.mark.parametrize("batch_size", [0, -2])
    def test_batch_size(self, golden_pipe, batch_size):
        with pytest.raises(ValueError, match="batch_size"):
            golden_pipe(batch_size=batch_size)

    def test_mask_of_another_size(self, golden_pipe):
        size = golden_pipe.transformer.config.image_size
        with pytest.raises(ValueError, match="mask_image"):
            golden_pipe(image=_digit_image(size), mask_image=PIL.Image.new("L", (size + 8, size), 255))

    def test_mask_without_image(self, golden_pipe):
        size = golden_pipe.transformer.config.image_size
        with pytest.raises(ValueError, match="image"):
            golden_pipe(mask_image=PIL.Image.new("L", (size, size), 255))

    def test_empty_mask(self, golden_pipe):
        size = golden_pipe.transformer.config.image_size
        with pytest.raises(ValueError, match="mask_image"):
            golden_pipe(image=_digit_image(size), mask_image=PIL.Image.new("L", (size, size), 0))

    def test_output_type_and_generators(self, golden_pipe):
        with pytest.raises(ValueError, match="output_type"):
            golden_pipe(output_type="jpeg")
        with pytest.raises(ValueError, match="generator"):
            golden_pipe(batch_size=2, generator=[_seed()])
