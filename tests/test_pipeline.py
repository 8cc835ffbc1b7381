"""MagePipeline: generation modes, guidance, editing, save/load, golden network calls and errors."""

from __future__ import annotations

import math

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
        condition = golden_pipe.prepare_condition_ids(None, ids.shape[0], ids.device)
        logits = golden_pipe.predict_logits(ids[:, 1:], condition)
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
        seen.append((step_index, timestep, int((tensors["latents"] == pipe.transformer.config.mask_token_id).sum())))
        return tensors

    golden_pipe(num_inference_steps=4, generator=_seed(), callback_on_step_end=callback, output_type="latent")
    assert [(i, t) for i, t, _ in seen] == [(0, 3), (1, 2), (2, 1), (3, 0)]  # timesteps descend
    masked = [m for _, _, m in seen]
    assert masked == sorted(masked, reverse=True) and masked[-1] == 0


def test_callback_can_replace_latents(golden_pipe):
    """A returned `latents` replaces the pipeline's ids: forcing every token to 0 after step 0 keeps them 0."""

    def force_zero(pipe, step_index, timestep, tensors):
        return {"latents": torch.zeros_like(tensors["latents"])} if step_index == 0 else tensors

    ids = golden_pipe(num_inference_steps=4, generator=_seed(), callback_on_step_end=force_zero,
                      output_type="latent").images
    assert (ids == 0).all()


def test_pipeline_callback_objects_get_their_tensor_inputs(golden_pipe):
    from diffusers.callbacks import MultiPipelineCallbacks, PipelineCallback

    class CountMasked(PipelineCallback):
        tensor_inputs = ["latents"]

        def __init__(self):
            super().__init__()
            self.counts = []

        def callback_fn(self, pipeline, step_index, timestep, callback_kwargs):
            self.counts.append(int((callback_kwargs["latents"] == pipeline.transformer.config.mask_token_id).sum()))
            return callback_kwargs

    single, first, second = CountMasked(), CountMasked(), CountMasked()
    golden_pipe(num_inference_steps=3, generator=_seed(), callback_on_step_end=single, output_type="latent")
    golden_pipe(num_inference_steps=3, generator=_seed(), output_type="latent",
                callback_on_step_end=MultiPipelineCallbacks([first, second]))
    assert len(single.counts) == 3 and single.counts[-1] == 0
    assert first.counts == second.counts == single.counts


def test_latents_keep_the_given_tokens_and_start_the_schedule_there(golden_pipe):
    """`latents=`: the known tokens come back exactly; the schedule spans the masked count (16 of N here)."""
    config = golden_pipe.transformer.config
    start = golden_pipe(batch_size=2, num_inference_steps=4, generator=_seed(1), output_type="latent").images
    region = torch.zeros_like(start, dtype=torch.bool)
    region[:, :16] = True
    latents = start.masked_fill(region, config.mask_token_id)
    seen = []
    result = golden_pipe(
        latents=latents, num_inference_steps=4, generator=_seed(2), output_type="latent",
        callback_on_step_end=lambda p, i, t, k: seen.append(int((k["latents"][0] == config.mask_token_id).sum())) or k,
    )
    assert torch.equal(result.images[~region], start[~region])
    assert (result.images < config.codebook_size).all()
    # floor(16 * cos(pi/2 * (t + 1) / 4)) for t = 0, 1, 2 (at least 1), then nothing left
    assert seen == [14, 11, 6, 0]
    # the round trip through pixels keeps far fewer tokens than `latents` does (MAGE's native state is the grid)
    decoded = golden_pipe.decode_tokens(start, "pt")
    again = golden_pipe.vqvae.tokenize(decoded)
    assert (again == start).float().mean() < 1.0
    # one row broadcasts over the batch; num_images_per_prompt repeats it
    many = golden_pipe(latents=latents[:1], batch_size=3, num_inference_steps=2, generator=_seed(), output_type="latent")
    assert many.images.shape[0] == 3 and torch.equal(many.images[:, 16:], start[:1, 16:].expand(3, -1))
    per_prompt = golden_pipe(latents=latents, num_images_per_prompt=2, num_inference_steps=2, output_type="latent")
    assert per_prompt.images.shape[0] == 4
    assert torch.equal(per_prompt.images[1, 16:], start[0, 16:]) and torch.equal(per_prompt.images[2, 16:], start[1, 16:])


def test_class_conditional_generation_and_names(conditional_pipe):
    by_index = conditional_pipe(class_label=[3, 7], num_inference_steps=4, generator=_seed(), output_type="latent")
    by_name = conditional_pipe(
        class_label=["digit 3", "digit 7"], num_inference_steps=4, generator=_seed(), output_type="latent"
    )
    assert torch.equal(by_index.images, by_name.images)
    # diffusers' / DiT's name, nested lists and tensors are the same request
    for labels in ([3, 7], [[3], [7]], torch.tensor([[3, 7]]), np.array([3, 7])):
        same = conditional_pipe(class_labels=labels, num_inference_steps=4, generator=_seed(), output_type="latent")
        assert torch.equal(same.images, by_index.images)
    with pytest.raises(ValueError, match="class_label"):
        conditional_pipe(class_labels=[1], class_label=[1], num_inference_steps=2)
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
    conditional_pipe._guidance_scale = 3.0
    conditional_pipe.scheduler.set_timesteps(4)
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


def test_strength_runs_the_last_steps_from_the_schedules_fraction(golden_pipe):
    """As aMUSEd's img2img: strength s runs the last int(T s) steps, starting with mask_ratio(start / T) masked."""
    config = golden_pipe.transformer.config
    size, n = config.image_size, config.num_image_tokens
    image = _digit_image(size)
    steps, seen = [], []
    result = golden_pipe(
        image=image, strength=0.5, num_inference_steps=8, generator=_seed(), output_type="latent",
        callback_on_step_end=lambda p, i, t, k: steps.append(t) or k,
    )
    assert steps == [3, 2, 1, 0] and (result.images < config.codebook_size).all()
    golden_pipe.scheduler.set_timesteps(8)
    tokens = golden_pipe.vqvae.tokenize(golden_pipe.image_processor(image, return_tensors="pt")["pixel_values"])
    start = golden_pipe.scheduler.add_noise(tokens, 3, generator=_seed())
    assert int((start == config.mask_token_id).sum()) == math.ceil(n * math.cos(math.pi / 2 * 4 / 8))
    # a mask limits it to a region; the rest is kept exactly
    mask = PIL.Image.new("L", (size, size), 0)
    mask.paste(255, (0, 0, size, size // 2))  # top half
    edited = golden_pipe(image=image, mask_image=mask, strength=0.5, num_inference_steps=8, generator=_seed(),
                         output_type="latent").images
    assert torch.equal(edited[0, n // 2:], tokens[0, n // 2:])
    with pytest.raises(ValueError, match="strength"):
        golden_pipe(image=image, strength=0.1, num_inference_steps=4)  # int(0.4) = 0 steps
    with pytest.raises(ValueError, match="strength"):
        golden_pipe(strength=0.5)


def test_several_images_times_images_per_prompt(golden_pipe):
    size = golden_pipe.transformer.config.image_size
    images = [_digit_image(size), PIL.Image.new("RGB", (size, size), (200, 30, 30))]
    mask = PIL.Image.new("L", (size, size), 0)
    mask.paste(255, (0, 0, size // 2, size))
    out = golden_pipe(image=images, mask_image=mask, num_images_per_prompt=2, num_inference_steps=3,
                      generator=_seed(), output_type="latent").images
    tokens = golden_pipe.vqvae.tokenize(golden_pipe.image_processor(images, return_tensors="pt")["pixel_values"])
    region = golden_pipe.prepare_edit_mask(images, mask)[0]
    assert out.shape[0] == 4
    for row, source in enumerate([0, 0, 1, 1]):  # each input image repeated in place
        assert torch.equal(out[row][~region], tokens[source][~region])


def test_an_empty_mask_keeps_its_image(golden_pipe):
    """An all-black mask is a no-op for its image, not an error for the batch."""
    size = golden_pipe.transformer.config.image_size
    images = [_digit_image(size), PIL.Image.new("RGB", (size, size), (10, 200, 30))]
    full, empty = PIL.Image.new("L", (size, size), 255), PIL.Image.new("L", (size, size), 0)
    tokens = golden_pipe.vqvae.tokenize(golden_pipe.image_processor(images, return_tensors="pt")["pixel_values"])
    out = golden_pipe(image=images, mask_image=[full, empty], num_inference_steps=3, generator=_seed(),
                      output_type="latent").images
    assert torch.equal(out[1], tokens[1])
    assert not torch.equal(out[0], tokens[0])


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

    def test_guidance_needs_class_labels_on_every_model(self, golden_pipe, conditional_pipe):
        for pipe in (golden_pipe, conditional_pipe):  # one rule, conditional model or not
            with pytest.raises(ValueError, match="guidance_scale.*class_labels"):
                pipe(guidance_scale=3.0, num_inference_steps=2)

    def test_bad_latents(self, golden_pipe):
        config = golden_pipe.transformer.config
        good = torch.full((1, config.num_image_tokens), config.mask_token_id)
        with pytest.raises(TypeError, match="latents"):
            golden_pipe(latents=good.float())
        with pytest.raises(ValueError, match="latents"):
            golden_pipe(latents=good[:, :-1])
        with pytest.raises(ValueError, match="latents"):
            golden_pipe(latents=good.clone().fill_(config.codebook_size))  # a class slot, not a token
        with pytest.raises(ValueError, match="image.*latents"):
            golden_pipe(latents=good, image=_digit_image(config.image_size), strength=0.5)

    def test_output_type_and_generators(self, golden_pipe):
        with pytest.raises(ValueError, match="output_type"):
            golden_pipe(output_type="jpeg")
        with pytest.raises(ValueError, match="generator"):
            golden_pipe(batch_size=2, generator=[_seed()])
        with pytest.raises(ValueError, match="callback_on_step_end_tensor_inputs"):
            golden_pipe(callback_on_step_end=lambda *a: {}, callback_on_step_end_tensor_inputs=["logits"])
