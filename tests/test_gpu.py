"""Checks that need a CUDA device (skipped without one; marker `gpu`): the decoding loop without host
synchronisation, bf16 generation against fp32, and diffusers' model CPU offload moving every component."""

import pytest
import torch

from mage_hf import DEFAULT_PIPELINE, MagePipeline

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


def _pipe(**kwargs) -> MagePipeline:
    pipe = MagePipeline.from_pretrained(DEFAULT_PIPELINE, **kwargs)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _generators(count: int) -> list[torch.Generator]:
    return [torch.Generator("cuda").manual_seed(i) for i in range(count)]


def test_compiled_decoding_loop_does_not_synchronise():
    """Inside the step loop nothing reads a device tensor back: `set_sync_debug_mode("error")` raises on any sync."""
    pipe = _pipe().to("cuda").compile_decoding_step(dynamic=False)
    kwargs = dict(class_labels=[1, 2, 3, 4], guidance_scale=2.0, num_inference_steps=8, output_type="latent")
    pipe(generator=_generators(4), **kwargs)  # compiles
    steps = []

    def synchronising_step(*args):
        torch.cuda.set_sync_debug_mode("error")
        try:
            return compiled(*args)
        finally:
            torch.cuda.set_sync_debug_mode("default")
            steps.append(1)

    compiled = pipe._compiled_decode_step
    pipe._compiled_decode_step = synchronising_step
    pipe(generator=_generators(4), **kwargs)
    assert len(steps) == 8


def test_bf16_generation_agrees_with_fp32():
    fp32 = _pipe().to("cuda")
    bf16 = _pipe(dtype=torch.bfloat16).to("cuda")
    kwargs = dict(class_labels=list(range(8)), guidance_scale=2.0, output_type="latent")
    a = fp32(generator=_generators(8), **kwargs).images
    b = bf16(generator=_generators(8), **kwargs).images
    assert (a == b).float().mean() >= 0.9


def test_model_cpu_offload_moves_every_component():
    pipe = _pipe()
    pipe.enable_model_cpu_offload()
    images = pipe(class_labels=[3], num_inference_steps=4, output_type="pt").images
    assert images.shape == (1, 3, 32, 32)
    assert pipe.transformer.device.type == "cpu" and pipe.vqvae.device.type == "cpu"  # offloaded after the call
