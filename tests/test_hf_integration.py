"""The contracts of transformers, diffusers and accelerate that users call, not only ours: meta-device
construction, offloading (emulated on the CPU: accelerate's hooks move weights between the same mechanisms there),
layerwise casting, torch.export, fullgraph compile, quiet feature loading, Auto classes, embeddings accessors and
the generic `DiffusionPipeline` loader."""

import inspect
import os
import re
import subprocess
import sys
import textwrap

import pytest
import torch
from accelerate import cpu_offload, disk_offload, init_empty_weights
from diffusers import DiffusionPipeline
from safetensors.torch import load_file, save_file
from transformers import AutoModel, AutoModelForMaskedImageModeling, AutoModelForPreTraining

import mage_hf
from mage_hf import (
    DEFAULT_PIPELINE,
    MageConfig,
    MageForImageClassification,
    MageForMaskedImageModeling,
    MageModel,
    MagePipeline,
    MageScheduler,
    MageVQModel,
)

SEED = 0


def _config(**kwargs) -> MageConfig:
    return MageConfig.from_preset("tiny", **kwargs)


def _inputs(config: MageConfig, batch: int = 2) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(SEED)
    return {
        "pixel_values": torch.rand(batch, 3, config.image_size, config.image_size, generator=generator),
        "bool_masked_pos": torch.rand(batch, config.num_image_tokens, generator=generator) < 0.6,
    }


@pytest.fixture(scope="module")
def saved_mim(tmp_path_factory):
    """A random pretraining model saved with `save_pretrained`, its folder and reference logits."""
    torch.manual_seed(SEED)
    model = MageForMaskedImageModeling(_config()).eval()
    folder = tmp_path_factory.mktemp("mim")
    model.save_pretrained(folder)
    with torch.no_grad():
        reference = model(**_inputs(model.config)).logits
    return model, folder, reference


# ----------------------------------------------------------------------------- construction


@pytest.mark.parametrize("model_class", [MageModel, MageForMaskedImageModeling, MageForImageClassification])
def test_models_build_on_the_meta_device(model_class):
    config = _config(drop_path_rate=0.1, num_labels=3)
    with torch.device("meta"):
        model = model_class(config)
    assert all(p.device.type == "meta" for p in model.parameters())
    with init_empty_weights():
        model = model_class(config)
    assert all(p.device.type == "meta" for p in model.parameters())
    # the stochastic-depth rates are still the linear ramp 0 .. drop_path_rate (layer 0 has none)
    encoder = model if model_class is MageModel else model.mage
    rates = [layer.drop_path.drop_prob for layer in encoder.layers[1:]]
    depth = config.num_hidden_layers
    assert rates == pytest.approx([0.1 * i / (depth - 1) for i in range(1, depth)])


def test_mlm_projection_is_tied_and_saved_once(saved_mim):
    model, folder, _ = saved_mim
    assert model.mlm_head.projection.weight is model.mage.embeddings.word_embeddings.weight
    assert model.get_output_embeddings() is model.mlm_head.projection
    keys = load_file(folder / "model.safetensors")
    assert "mlm_head.projection.weight" not in keys and "mage.embeddings.word_embeddings.weight" in keys
    untied = MageForMaskedImageModeling(_config(tie_word_embeddings=False))
    assert untied.mlm_head.projection.weight is not untied.mage.embeddings.word_embeddings.weight


def test_tied_projection_does_not_train_the_embeddings_through_the_head():
    """As the original: the product uses the embeddings detached; an untied projection trains itself."""
    for tie in (True, False):
        model = MageForMaskedImageModeling(_config(tie_word_embeddings=tie, include_vq_tokenizer=False))
        hidden = torch.randn(1, 3, model.config.hidden_size, requires_grad=True)
        model.mlm_head.projection(hidden).sum().backward()
        grad = model.mlm_head.projection.weight.grad
        assert (grad is None) if tie else (grad is not None and grad.abs().sum() > 0)


def test_input_embeddings_accessors_and_resize_refused():
    model = MageForMaskedImageModeling(_config())
    assert model.get_input_embeddings() is model.mage.embeddings.word_embeddings
    replacement = torch.nn.Embedding(model.config.vocab_size, model.config.hidden_size)
    model.set_input_embeddings(replacement)
    assert model.mage.embeddings.word_embeddings is replacement
    with pytest.raises(NotImplementedError, match="resize_token_embeddings.*codebook_size"):
        model.resize_token_embeddings(model.config.vocab_size + 8)


def test_forwards_declare_the_transformers_kwargs():
    """transformers reads `**kwargs: Unpack[TransformersKwargs]` to know that `output_attentions` works."""
    for model_class in (MageModel, MageForMaskedImageModeling, MageForImageClassification):
        kwargs = inspect.signature(model_class.forward).parameters["kwargs"].annotation
        assert "output_attentions" in kwargs.__args__[0].__annotations__, model_class


# ----------------------------------------------------------------------------- loading


def test_feature_model_loads_a_pretraining_folder_quietly(saved_mim, tmp_path):
    _, folder, _ = saved_mim
    model, info = AutoModel.from_pretrained(folder, output_loading_info=True)
    assert isinstance(model, MageModel)
    assert info["unexpected_keys"] == set() and info["missing_keys"] == set()
    classifier, info = MageForImageClassification.from_pretrained(folder, num_labels=3, output_loading_info=True)
    assert info["unexpected_keys"] == set()  # decoder, MLM head and the final LayerNorm are expected to go
    assert info["missing_keys"] == {"fc_norm.weight", "fc_norm.bias", "head.weight", "head.bias"}
    # a key that is not part of the layout is still reported
    weights = load_file(folder / "model.safetensors")
    weights["decoder.layers.0.attention.extra"] = torch.zeros(3)
    weights["mlm_head.typo"] = torch.zeros(2)
    save_file(weights, tmp_path / "model.safetensors", metadata={"format": "pt"})
    (tmp_path / "config.json").write_text((folder / "config.json").read_text())
    _, info = AutoModel.from_pretrained(tmp_path, output_loading_info=True)
    assert info["unexpected_keys"] == {"decoder.layers.0.attention.extra", "mlm_head.typo"}


def test_auto_classes_for_the_pretraining_model(saved_mim):
    _, folder, reference = saved_mim
    for auto_class in (AutoModelForMaskedImageModeling, AutoModelForPreTraining):
        model = auto_class.from_pretrained(folder).eval()
        assert isinstance(model, MageForMaskedImageModeling)
        with torch.no_grad():
            assert torch.equal(model(**_inputs(model.config)).logits, reference)


# ----------------------------------------------------------------------------- offloading on the CPU


def _offload_with_device_map(folder, tmp_path):
    return MageForMaskedImageModeling.from_pretrained(
        folder, device_map="auto", max_memory={"cpu": "300KB"}, offload_folder=tmp_path
    )


def _accelerate_cpu_offload(folder, tmp_path):
    model = MageForMaskedImageModeling.from_pretrained(folder)
    cpu_offload(model, execution_device=torch.device("cpu"), offload_buffers=True)
    return model


def _accelerate_disk_offload(folder, tmp_path):
    model = MageForMaskedImageModeling.from_pretrained(folder)
    disk_offload(model, tmp_path, execution_device=torch.device("cpu"), offload_buffers=True)
    return model


def _group_offload_to_disk(folder, tmp_path):
    from diffusers.hooks import apply_group_offloading

    model = MageForMaskedImageModeling.from_pretrained(folder)
    cpu = torch.device("cpu")
    apply_group_offloading(model, onload_device=cpu, offload_device=cpu, offload_type="block_level",
                           num_blocks_per_group=1, offload_to_disk_path=str(tmp_path))
    return model


@pytest.mark.parametrize(
    "offload", [_offload_with_device_map, _accelerate_cpu_offload, _accelerate_disk_offload, _group_offload_to_disk]
)
def test_offloaded_model_gives_the_same_logits(saved_mim, tmp_path, offload):
    """Weights live on disk / the meta device and are loaded by hooks in each module's forward."""
    _, folder, reference = saved_mim
    model = offload(folder, tmp_path).eval()
    if offload is _offload_with_device_map:
        assert set(model.hf_device_map.values()) == {"disk"}
        assert model.mage.embeddings.word_embeddings.weight.device.type == "meta"
    with torch.no_grad():
        for _ in range(2):  # the hooks put the weights back after each forward
            logits = model(**_inputs(model.config)).logits
            assert (logits - reference).abs().max() <= 1e-5


def test_layerwise_fp8_casting_matches_fp8_rounded_weights(saved_mim):
    """diffusers' layerwise casting stores Linear / Conv / Embedding weights in fp8 and upcasts them in forward:
    the output equals a float32 model whose weights were rounded to fp8 the same way."""
    from diffusers.hooks import apply_layerwise_casting
    from diffusers.hooks.layerwise_casting import DEFAULT_SKIP_MODULES_PATTERN

    _, folder, _ = saved_mim
    storage = torch.float8_e4m3fn
    rounded = MageForMaskedImageModeling.from_pretrained(folder).eval()
    with torch.no_grad():
        for name, module in rounded.named_modules():
            if isinstance(module, (torch.nn.Linear, torch.nn.Conv2d, torch.nn.Embedding)) and not any(
                re.search(pattern, name) for pattern in DEFAULT_SKIP_MODULES_PATTERN
            ):
                for parameter in module.parameters(recurse=False):
                    parameter.copy_(parameter.to(storage).float())
        expected = rounded(**_inputs(rounded.config)).logits
    cast = MageForMaskedImageModeling.from_pretrained(folder).eval()
    apply_layerwise_casting(cast, storage_dtype=storage, compute_dtype=torch.float32)
    assert cast.mage.vqgan.quantizer.embedding.weight.dtype == storage
    with torch.no_grad():
        logits = cast(**_inputs(cast.config)).logits
    assert (logits - expected).abs().max() <= 1e-5


@pytest.fixture(scope="module")
def default_pipe():
    pipe = MagePipeline.from_pretrained(DEFAULT_PIPELINE)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _generate(pipe, **kwargs):
    generators = [torch.Generator().manual_seed(i) for i in range(2)]
    return pipe(class_labels=[1, 7], num_inference_steps=3, generator=generators, output_type="pt", **kwargs).images


def test_pipeline_with_every_component_offloaded(default_pipe):
    """The CPU emulation of `enable_sequential_cpu_offload` (accelerate's `cpu_offload` on each component: diffusers'
    own wrapper refuses a CPU-only machine and passes "cpu:0", which accelerate's tied-weight path cannot handle)."""
    expected = _generate(default_pipe)
    pipe = MagePipeline.from_pretrained(DEFAULT_PIPELINE)
    pipe.set_progress_bar_config(disable=True)
    for component in (pipe.vqvae, pipe.transformer):
        cpu_offload(component, execution_device=torch.device("cpu"), offload_buffers=True)
    assert pipe.vqvae.decoder.conv_out.weight.device.type == "meta"
    assert (_generate(pipe) - expected).abs().max() <= 1e-5
    # editing tokenizes with the offloaded VQGAN too
    image = (expected[0] * 255).round().to(torch.uint8)
    edited = pipe(image=image, strength=0.5, num_inference_steps=4, output_type="latent").images
    assert edited.shape == (1, pipe.transformer.config.num_image_tokens)


def _count_hook_calls(pipe, fired: list[str]) -> None:
    """Record which component's offload hook fires (`maybe_free_model_hooks` installs new hooks after each call)."""
    for name in ("vqvae", "transformer"):
        hook = getattr(pipe, name)._hf_hook
        original = hook.pre_forward

        def counting(module, *args, _name=name, _original=original, **kwargs):
            fired.append(_name)
            return _original(module, *args, **kwargs)

        hook.pre_forward = counting


def test_model_cpu_offload_hooks_fire_for_the_vqgan(default_pipe):
    """`enable_model_cpu_offload` moves a component when its hook fires; the VQGAN's decode / tokenize are not
    `forward`, so they carry diffusers' `apply_forward_hook`."""
    expected = _generate(default_pipe)
    pipe = MagePipeline.from_pretrained(DEFAULT_PIPELINE)
    pipe.set_progress_bar_config(disable=True)
    pipe.enable_model_cpu_offload(device="cpu")
    fired = []
    _count_hook_calls(pipe, fired)
    images = _generate(pipe)
    assert fired == ["transformer"] * 3 + ["vqvae"]  # 3 steps, then the decode
    assert torch.equal(images, expected)
    fired.clear()
    _count_hook_calls(pipe, fired)
    pipe(image=images[:1], strength=0.5, num_inference_steps=4, output_type="latent")
    # tokenizing the input image (tokenize and the encode inside it), then the last 2 of 4 steps
    assert fired[0] == "vqvae" and fired.count("transformer") == 2 and fired[-1] == "transformer"


# ----------------------------------------------------------------------------- export and compile


def _export_inputs(model):
    config = model.config
    if isinstance(model, MageForMaskedImageModeling):
        ids = torch.randint(0, config.codebook_size, (2, 1 + config.num_image_tokens), generator=torch.Generator())
        ids[:, 0] = config.fake_class_id
        ids[:, 5:40] = config.mask_token_id
        return {"input_ids": ids}, "logits"
    pixels = torch.rand(2, 3, config.image_size, config.image_size)
    return {"pixel_values": pixels}, "logits" if isinstance(model, MageForImageClassification) else "last_hidden_state"


@pytest.mark.parametrize("model_class", [MageModel, MageForMaskedImageModeling, MageForImageClassification])
def test_torch_export_matches_eager(model_class):
    torch.manual_seed(SEED)
    model = model_class(_config(num_labels=4)).eval()
    inputs, field = _export_inputs(model)
    exported = torch.export.export(model, (), inputs)
    with torch.no_grad():
        expected = getattr(model(**inputs), field)
    assert (getattr(exported.module()(**inputs), field) - expected).abs().max() <= 1e-5


def test_pretraining_forward_exports_with_sampled_masks():
    """The training path (pixels in, masks sampled inside) exports too: the mask count is a tensor, not a read-back."""
    model = MageForMaskedImageModeling(_config()).eval()
    pixels = torch.rand(2, 3, 32, 32)
    exported = torch.export.export(model, (), {"pixel_values": pixels})
    output = exported.module()(pixel_values=pixels)
    masked, dropped = output["bool_masked_pos"], output["bool_dropped_pos"]
    assert masked.sum(1).min() >= model.config.num_dropped_tokens and (dropped & ~masked).sum() == 0


@pytest.mark.slow
@pytest.mark.parametrize("model_class", [MageModel, MageForMaskedImageModeling, MageForImageClassification])
def test_onnx_export_runs_in_onnxruntime(model_class, tmp_path):
    """torch.onnx (dynamo exporter) -> onnxruntime gives the eager outputs."""
    onnxruntime = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    torch.manual_seed(SEED)
    model = model_class(_config(num_labels=4)).eval()
    inputs, field = _export_inputs(model)
    path = tmp_path / "model.onnx"
    torch.onnx.export(model, (), str(path), kwargs=inputs, dynamo=True)
    session = onnxruntime.InferenceSession(str(path))
    outputs = session.run(None, {name: tensor.numpy() for name, tensor in inputs.items()})
    with torch.no_grad():
        expected = getattr(model(**inputs), field).numpy()
    first = next(output for output in outputs if output.shape == expected.shape)
    assert abs(first - expected).max() <= 1e-5


@pytest.mark.slow
def test_transformer_compiles_with_fullgraph():
    torch.manual_seed(SEED)
    model = MageForMaskedImageModeling(_config(include_vq_tokenizer=False)).eval()
    inputs, _ = _export_inputs(model)
    compiled = torch.compile(model, fullgraph=True)
    with torch.no_grad():
        assert (compiled(**inputs).logits - model(**inputs).logits).abs().max() <= 1e-5


# ----------------------------------------------------------------------------- the generic diffusers loader


def test_diffusion_pipeline_loads_the_shipped_and_a_saved_folder(default_pipe, tmp_path):
    loaded = DiffusionPipeline.from_pretrained(DEFAULT_PIPELINE)
    assert type(loaded) is MagePipeline
    loaded.set_progress_bar_config(disable=True)
    assert torch.equal(_generate(loaded), _generate(default_pipe))
    default_pipe.save_pretrained(tmp_path)
    assert (tmp_path / "pipeline_mage.py").is_file()
    again = DiffusionPipeline.from_pretrained(tmp_path)
    again.set_progress_bar_config(disable=True)
    assert torch.equal(_generate(again), _generate(default_pipe))
    assert MageScheduler in loaded.scheduler.compatibles


def test_diffusion_pipeline_loads_a_converted_folder(golden, tmp_path):
    from mage_hf.commands import main

    assert main([
        "convert", "--checkpoint", str(golden.pretraining_checkpoint), "--output-dir", str(tmp_path / "model"),
        "--pipeline-dir", str(tmp_path / "pipeline"), "--num-attention-heads", str(golden.num_heads),
        "--decoder-num-attention-heads", str(golden.decoder_num_heads),
    ]) == 0
    pipe = DiffusionPipeline.from_pretrained(tmp_path / "pipeline")
    assert isinstance(pipe, MagePipeline) and isinstance(pipe.vqvae, MageVQModel)


def test_diffusion_pipeline_loads_without_importing_mage_hf(tmp_path):
    """The custom-pipeline route for an interpreter that never imported us (the package must be installed)."""
    script = textwrap.dedent(f"""
        import sys
        from diffusers import DiffusionPipeline
        assert "mage_hf" not in sys.modules
        pipe = DiffusionPipeline.from_pretrained({DEFAULT_PIPELINE!r}, custom_pipeline="pipeline_mage",
                                                 trust_remote_code=True)
        print(type(pipe).__name__, pipe(class_labels=3, num_inference_steps=2, output_type="latent").images.shape)
    """)
    env = {**os.environ, "HF_MODULES_CACHE": str(tmp_path), "HF_HUB_OFFLINE": "1"}
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "MagePipeline torch.Size([1, 64])" in result.stdout


def test_package_names_are_visible_to_diffusers():
    import diffusers

    assert diffusers.MagePipeline is MagePipeline and diffusers.MageScheduler is MageScheduler
    assert diffusers.MageVQModel is mage_hf.MageVQModel


def test_image_processor_fast_backend_is_the_torch_ops_one(tmp_path, caplog):
    """`backend="torchvision"` gives `MageImageProcessorTorch` (torch ops, no torchvision needed) without a fallback
    warning; the default without torchvision installed is the PIL one."""
    from transformers import AutoImageProcessor
    from transformers.models.auto.image_processing_auto import IMAGE_PROCESSOR_MAPPING
    from transformers.utils import logging as transformers_logging

    assert dict(IMAGE_PROCESSOR_MAPPING[MageConfig]) == {
        "pil": mage_hf.MageImageProcessor, "torchvision": mage_hf.MageImageProcessorTorch}
    mage_hf.MageImageProcessor.for_image_size(32).save_pretrained(tmp_path)
    _config().save_pretrained(tmp_path)
    transformers_logging.enable_propagation()
    try:
        with caplog.at_level("WARNING"):
            fast = AutoImageProcessor.from_pretrained(tmp_path, backend="torchvision")
    finally:
        transformers_logging.disable_propagation()
    assert type(fast) is mage_hf.MageImageProcessorTorch and fast.backend == "torch"
    assert "not available" not in caplog.text
    assert type(AutoImageProcessor.from_pretrained(tmp_path, backend="pil")) is mage_hf.MageImageProcessor


def test_vqgan_slicing_decodes_one_image_at_a_time_with_the_same_output():
    """`enable_slicing()` (diffusers' AutoencoderMixin): the decoder never sees more than one image, so memory stays
    flat in the batch; the images are the batched ones."""
    torch.manual_seed(SEED)
    vq = MageVQModel(block_out_channels=(32, 32, 64), layers_per_block=1, latent_channels=32, num_vq_embeddings=64,
                     sample_size=32).eval()
    pixels = torch.rand(4, 3, 32, 32)
    with torch.no_grad():
        ids, batched = vq.tokenize(pixels), vq.decode_indices(vq.tokenize(pixels))
    seen = []
    hooks = [module.register_forward_hook(lambda m, args, out: seen.append(args[0].shape[0]))
             for module in (vq.encoder, vq.decoder)]
    vq.enable_slicing()
    with torch.no_grad():
        assert torch.equal(vq.tokenize(pixels), ids)
        sliced = vq.decode_indices(ids)
    for hook in hooks:
        hook.remove()
    assert set(seen) == {1} and len(seen) == 8
    assert (sliced - batched).abs().max() <= 1e-5
    vq.disable_slicing()
    assert not vq.use_slicing


@pytest.mark.slow
def test_compiled_vqgan_convs_match_eager():
    """`compile_convs()` (inductor fuses GroupNorm + SiLU + conv): the same tokens and decoded images (fp32), and a
    bfloat16 decode within bf16 tolerance of fp32."""
    torch.manual_seed(SEED)
    config = dict(block_out_channels=(32, 32, 64), layers_per_block=1, latent_channels=32, num_vq_embeddings=64,
                  sample_size=32)
    eager = MageVQModel(**config).eval()
    compiled = MageVQModel(**config).eval()
    compiled.load_state_dict(eager.state_dict())
    compiled.compile_convs(dynamic=False)
    pixels = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        ids = eager.tokenize(pixels)
        assert torch.equal(compiled.tokenize(pixels), ids)
        assert (compiled.decode_indices(ids) - eager.decode_indices(ids)).abs().max() <= 1e-4
        low = MageVQModel(**config).eval()
        low.load_state_dict(eager.state_dict())
        low.to(torch.bfloat16)
        error = (low.decode_indices(ids).float() - eager.decode_indices(ids)).abs()
        assert error.mean() <= 1e-2 and error.max() <= 1e-1  # bf16 keeps ~3 significant digits per layer
