"""The GPU-oriented paths, checked on CPU with tiny random pipelines: bf16 / fp16 loading, autocast, float32
scheduler math on low-precision logits, `torch.compile` of the transformer, and chunked `mage-hf generate
--batch-size` whose images do not depend on the batch size."""

from __future__ import annotations

import copy
import warnings

import numpy as np
import PIL.Image
import pytest
import torch

from mage_hf import MageConfig, MageForMaskedImageModeling, MagePipeline
from mage_hf.commands import main as cli_main
from mage_hf.sampling import generate_images, index_chunks, shard_indices

NUM_CLASSES = 4
STEPS = 4
MIN_TOKEN_AGREEMENT = 0.9  # bf16 / fp16 vs fp32 at the same seeds; measured 0.99-1.0 on these tiny models


def _generators(count: int, seed: int = 0) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(seed + i) for i in range(count)]


def _tiny_pipeline(**config_kwargs) -> MagePipeline:
    torch.manual_seed(0)
    model = MageForMaskedImageModeling(MageConfig.from_preset("tiny", **config_kwargs)).eval()
    pipe = MagePipeline.from_masked_image_model(model)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def pipe() -> MagePipeline:
    return _tiny_pipeline()


@pytest.fixture(scope="module")
def pipe_dir(pipe, tmp_path_factory) -> str:
    folder = tmp_path_factory.mktemp("tiny-pipeline")
    pipe.save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="module")
def conditional_dir(tmp_path_factory) -> str:
    folder = tmp_path_factory.mktemp("tiny-conditional")
    labels = {i: f"class {i}" for i in range(NUM_CLASSES)}
    _tiny_pipeline(num_condition_classes=NUM_CLASSES, id2label=labels, num_labels=NUM_CLASSES).save_pretrained(folder)
    return str(folder)


def _load(folder: str, **kwargs) -> MagePipeline:
    loaded = MagePipeline.from_pretrained(folder, **kwargs)
    loaded.set_progress_bar_config(disable=True)
    return loaded


def _assert_float_images(images: torch.Tensor, batch: int, size: int) -> None:
    assert images.dtype == torch.float32 and images.shape == (batch, 3, size, size)
    assert torch.isfinite(images).all() and images.min() >= 0 and images.max() <= 1


def _agreement(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a == b).float().mean().item()


# --------------------------------------------------------------------------------------- reduced precision


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_loading_returns_float_images_close_to_fp32(pipe, pipe_dir, dtype):
    low = _load(pipe_dir, dtype=dtype)  # diffusers 0.42 spelling (`torch_dtype` is deprecated there)
    assert low.transformer.dtype == dtype and low.vqvae.dtype == dtype
    size, codebook = pipe.transformer.config.image_size, pipe.transformer.config.codebook_size
    images = low(batch_size=4, num_inference_steps=STEPS, generator=_generators(4), output_type="pt").images
    _assert_float_images(images, 4, size)
    array = low(batch_size=2, num_inference_steps=STEPS, generator=_generators(2), output_type="np").images
    assert array.dtype == np.float32 and 0 <= array.min() and array.max() <= 1

    tokens = low(batch_size=4, num_inference_steps=STEPS, generator=_generators(4), output_type="latent").images
    reference = pipe(batch_size=4, num_inference_steps=STEPS, generator=_generators(4), output_type="latent").images
    assert int(tokens.max()) < codebook  # every token decoded
    assert _agreement(tokens, reference) >= MIN_TOKEN_AGREEMENT


def test_low_precision_logits_reach_the_scheduler_as_float32(pipe, pipe_dir):
    low = _load(pipe_dir, dtype=torch.bfloat16)
    config = pipe.transformer.config
    ids = torch.full((2, config.num_image_tokens), config.mask_token_id)
    condition = pipe.prepare_condition_ids(None, 2, torch.device("cpu"))
    logits = low.predict_logits(ids, condition)
    reference = pipe.predict_logits(ids, condition)
    assert logits.dtype == torch.float32 and logits.shape == reference.shape
    # bf16 keeps ~3 significant digits: errors of a few 1e-2 on logits of order 1
    assert (logits - reference).abs().max() < 0.05 * max(1.0, reference.abs().max().item())


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_scheduler_step_runs_in_float32_on_low_precision_logits(pipe, dtype):
    """softmax, sampling, Gumbel noise and the confidence sort see float32 whatever the logits' dtype."""
    scheduler = copy.deepcopy(pipe.scheduler)
    scheduler.set_timesteps(STEPS)
    config = pipe.transformer.config
    logits = torch.randn(3, config.num_image_tokens, config.codebook_size, generator=torch.Generator().manual_seed(1))
    low = logits.to(dtype)
    ids = torch.full((3, config.num_image_tokens), config.mask_token_id)
    for step in range(STEPS - 1):
        from_low = scheduler.step(low, step, ids, generator=_generators(3))
        from_upcast = scheduler.step(low.float(), step, ids, generator=_generators(3))
        assert torch.equal(from_low.prev_sample, from_upcast.prev_sample)
        assert torch.equal(from_low.pred_original_sample, from_upcast.pred_original_sample)
        assert from_low.prev_sample.dtype == torch.long
        ids = from_low.prev_sample


def test_autocast_bfloat16_on_fp32_weights(pipe):
    config = pipe.transformer.config
    ids = torch.full((2, 1 + config.num_image_tokens), config.mask_token_id)
    ids[:, 0] = config.fake_class_id
    reference = pipe(batch_size=4, num_inference_steps=STEPS, generator=_generators(4), output_type="latent").images
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        assert pipe.transformer(input_ids=ids).logits.dtype == torch.bfloat16  # autocast is in effect
        images = pipe(batch_size=4, num_inference_steps=STEPS, generator=_generators(4), output_type="pt").images
        tokens = pipe(batch_size=4, num_inference_steps=STEPS, generator=_generators(4), output_type="latent").images
    assert pipe.transformer.dtype == torch.float32
    _assert_float_images(images, 4, config.image_size)
    assert _agreement(tokens, reference) >= MIN_TOKEN_AGREEMENT


def test_bf16_guidance_and_inpainting_are_well_formed(conditional_dir):
    low = _load(conditional_dir, dtype=torch.bfloat16)
    size = low.transformer.config.image_size
    guided = low(class_label=[0, 3], guidance_scale=3.0, num_inference_steps=STEPS, generator=_generators(2),
                 output_type="pt").images
    _assert_float_images(guided, 2, size)
    photo = torch.rand(2, 3, size, size, generator=torch.Generator().manual_seed(2))
    mask = torch.zeros(2, 1, size, size)
    mask[..., size // 2:] = 1.0
    tokens = low(image=photo, mask_image=mask, num_inference_steps=STEPS, generator=_generators(2),
                 output_type="latent").images
    kept = low.vqvae.tokenize(photo.to(torch.bfloat16))
    region = low.prepare_edit_mask(photo, mask)
    assert torch.equal(tokens[~region], kept[~region])  # the kept half is the image's own bf16 tokens


# --------------------------------------------------------------------------------------- torch.compile


@pytest.mark.slow  # inductor compiles C++ kernels: 10-60 s on 2 busy CPU cores with a cold cache
def test_compile_transformer_matches_eager(pipe):
    """Compiled and eager transformer: logits within 1e-4, the same tokens and images (tiny model, one shape)."""
    compiled = copy.deepcopy(pipe)
    assert not compiled.transformer_is_compiled
    assert compiled.compile_transformer(dynamic=False) is compiled
    assert compiled.transformer_is_compiled
    assert list(compiled.transformer.state_dict()) == list(pipe.transformer.state_dict())  # names unchanged

    config = pipe.transformer.config
    ids = torch.randint(0, config.codebook_size, (2, config.num_image_tokens), generator=torch.Generator().manual_seed(3))
    ids[:, ::3] = config.mask_token_id
    condition = pipe.prepare_condition_ids(None, 2, torch.device("cpu"))
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        got = compiled.predict_logits(ids, condition)
        images = compiled(batch_size=2, num_inference_steps=STEPS, generator=_generators(2), output_type="pt").images
    expected = pipe.predict_logits(ids, condition)
    assert (got - expected).abs().max() < 1e-4
    reference = pipe(batch_size=2, num_inference_steps=STEPS, generator=_generators(2), output_type="pt").images
    assert (images - reference).abs().max() < 1e-4


@pytest.mark.slow  # one inductor compile of the whole step
def test_compiled_decoding_step_is_one_graph_with_the_eager_tokens(pipe):
    """`compile_decoding_step`: transformer + guidance + scheduler maths compile with fullgraph=True into ONE graph
    for every step (step index and guidance are tensors); the tokens equal eager decoding's for the same
    generators, with a guidance ramp and editing (`latents` with known tokens)."""
    import torch._dynamo

    conditional = copy.deepcopy(pipe)
    kwargs = dict(num_inference_steps=STEPS, output_type="latent")
    config = pipe.transformer.config
    start = torch.randint(0, config.codebook_size, (3, config.num_image_tokens), generator=torch.Generator().manual_seed(1))
    start[:, : config.num_image_tokens // 2] = config.mask_token_id
    eager = [conditional(generator=_generators(3), batch_size=3, **kwargs).images,
             conditional(generator=_generators(3), latents=start, **kwargs).images]
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    assert conditional.compile_decoding_step(dynamic=False) is conditional and conditional.decoding_step_is_compiled
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        compiled = [conditional(generator=_generators(3), batch_size=3, **kwargs).images,
                    conditional(generator=_generators(3), latents=start, **kwargs).images]
    assert torch.equal(compiled[0], eager[0]) and torch.equal(compiled[1], eager[1])
    assert torch.equal(compiled[1][:, config.num_image_tokens // 2:], start[:, config.num_image_tokens // 2:])
    # one graph for the plain start, one for the editing start (its per-image masked counts): not one per step
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] <= 2


# --------------------------------------------------------------------------------------- mage-hf generate


def test_index_chunks_and_shards():
    assert index_chunks(range(5), 2) == [[0, 1], [2, 3], [4]]
    assert index_chunks(range(5), None) == [[0, 1, 2, 3, 4]]
    assert index_chunks(range(3), 8) == [[0, 1, 2]]
    assert index_chunks([1, 3, 5], 2) == [[1, 3], [5]]
    assert [shard_indices(5, rank, 2) for rank in (0, 1)] == [[0, 2, 4], [1, 3]]
    with pytest.raises(ValueError, match="process_index"):
        shard_indices(5, 2, 2)


def _generate(folder: str, out, *extra: str) -> list[np.ndarray]:
    code = cli_main(["generate", "--pipeline", folder, "--num-images", "5", "--steps", str(STEPS), "--device", "cpu",
                     "--output", str(out / "grid.png"), "--output-dir", str(out / "each"), "--scale", "1",
                     "--no-progress", *extra])
    assert code == 0
    files = sorted((out / "each").glob("*.png"))
    assert len(files) == 5
    return [np.asarray(PIL.Image.open(path)) for path in files]


@pytest.mark.parametrize("labels", [None, [0, 2, 0, 2, 0]], ids=["unconditional", "class-conditional"])
def test_generate_images_tokens_do_not_depend_on_batch_size(pipe_dir, conditional_dir, labels):
    """5 images in chunks of 2 (2 + 2 + 1) or all at once: the same tokens (per-image generators seed + i)."""
    loaded = _load(pipe_dir if labels is None else conditional_dir)
    kwargs = {} if labels is None else {"class_labels": labels, "guidance_scale": 2.0}
    runs = {
        batch: generate_images(loaded, 5, batch, seed=7, num_inference_steps=STEPS, output_type="latent", **kwargs)
        for batch in (2, 5, None)
    }
    assert runs[2].shape == (5, loaded.transformer.config.num_image_tokens)
    assert torch.equal(runs[2], runs[5]) and torch.equal(runs[2], runs[None])
    assert not torch.equal(runs[2][0], runs[2][1])  # a different seed per image
    if labels is not None:
        kwargs["class_labels"] = labels[:3]
    pil = generate_images(loaded, 3, 2, seed=7, num_inference_steps=STEPS, **kwargs)
    assert len(pil) == 3 and all(isinstance(image, PIL.Image.Image) for image in pil)


@pytest.mark.parametrize("labels", [None, ["0", "2"]], ids=["unconditional", "class-conditional"])
def test_generate_command_batch_size_does_not_change_images(pipe_dir, conditional_dir, tmp_path, labels):
    """`mage-hf generate --num-images 5 --batch-size 2` vs `--batch-size 5`: the same images. The tokens are
    identical (test above); the VQGAN decode of a batch of 1 vs 5 may round a pixel to the next grey level."""
    folder, extra = (pipe_dir, []) if labels is None else (conditional_dir, ["--class-label", *labels])
    in_twos = _generate(folder, tmp_path / "b2", "--batch-size", "2", *extra)
    at_once = _generate(folder, tmp_path / "b5", "--batch-size", "5", *extra)
    for a, b in zip(in_twos, at_once, strict=True):
        assert np.abs(a.astype(int) - b.astype(int)).max() <= 1
    assert not np.array_equal(in_twos[0], in_twos[1])  # different seeds per image


def test_generate_dtype_and_autocast_flags(pipe_dir, tmp_path):
    fp32 = _generate(pipe_dir, tmp_path / "fp32", "--batch-size", "2")
    for name, flags in {"bf16": ["--dtype", "bfloat16"], "autocast": ["--autocast", "bfloat16"],
                        "fp16": ["--dtype", "float16", "--batch-size", "3"]}.items():
        images = _generate(pipe_dir, tmp_path / name, *flags)
        assert all(image.shape == fp32[0].shape and image.dtype == np.uint8 for image in images)


def test_generate_rejects_bad_batch_size(pipe_dir, tmp_path, capsys):
    assert cli_main(["generate", "--pipeline", pipe_dir, "--batch-size", "0", "--output", str(tmp_path / "x.png")]) == 2
    assert "mage-hf generate: error: `--batch-size` must be >= 1" in capsys.readouterr().err


@pytest.mark.slow
def test_generate_command_compile_matches_eager(pipe_dir, tmp_path):
    eager = _generate(pipe_dir, tmp_path / "eager", "--batch-size", "5")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        compiled = _generate(pipe_dir, tmp_path / "compiled", "--batch-size", "5", "--compile")
    for a, b in zip(eager, compiled, strict=True):
        assert np.array_equal(a, b)
