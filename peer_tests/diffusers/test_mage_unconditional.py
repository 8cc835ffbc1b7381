"""diffusers' PipelineTesterMixin for MagePipeline, unconditional generation (modelled on aMUSEd's and DDPM's
pipeline tests). Copied by peer_tests/run.py to `.peer/diffusers/tests/pipelines/mage/`."""

import unittest

import torch

from mage_hf import MagePipeline

from ..pipeline_params import UNCONDITIONAL_IMAGE_GENERATION_BATCH_PARAMS, UNCONDITIONAL_IMAGE_GENERATION_PARAMS
from ..test_pipelines_common import PipelineTesterMixin
from ...testing_utils import enable_full_determinism, torch_device
from .mage_dummies import IMAGE_SIZE, NUM_IMAGE_TOKENS, get_mage_dummy_components, make_generator

enable_full_determinism()

NO_CFG = (
    "an unconditional MAGE model has no condition to guide with: MagePipeline rejects guidance_scale > 1 for it "
    "by design (classifier-free guidance is covered by MagePipelineFastTests)"
)


class MageUnconditionalPipelineFastTests(PipelineTesterMixin, unittest.TestCase):
    pipeline_class = MagePipeline
    params = UNCONDITIONAL_IMAGE_GENERATION_PARAMS
    batch_params = UNCONDITIONAL_IMAGE_GENERATION_BATCH_PARAMS

    def get_dummy_components(self):
        return get_mage_dummy_components(num_condition_classes=0)

    def get_dummy_inputs(self, device, seed=0):
        return {
            "batch_size": 1,
            "generator": make_generator(device, seed),
            "num_inference_steps": 2,
            "output_type": "np",
        }

    @unittest.skip(reason=NO_CFG)
    def test_cfg(self):
        pass

    @unittest.skip(reason=NO_CFG)
    def test_callback_cfg(self):
        pass

    @unittest.skip(
        reason="the common test multiplies only `batch_params` inputs, but an unconditional pipeline's batch is the "
        "`batch_size` scalar (empty UNCONDITIONAL_IMAGE_GENERATION_BATCH_PARAMS); see test_batch_size_times_num_images"
    )
    def test_num_images_per_prompt(self):
        pass

    def test_batch_size_times_num_images(self):
        pipe = self.pipeline_class(**self.get_dummy_components()).to(torch_device)
        pipe.set_progress_bar_config(disable=None)
        for batch_size in [1, 2]:
            for num_images_per_prompt in [1, 2]:
                inputs = {**self.get_dummy_inputs(torch_device), "batch_size": batch_size}
                images = pipe(**inputs, num_images_per_prompt=num_images_per_prompt)[0]
                self.assertEqual(images.shape[0], batch_size * num_images_per_prompt)

    def test_inference(self):
        pipe = self.pipeline_class(**self.get_dummy_components()).to(torch_device)
        pipe.set_progress_bar_config(disable=None)
        inputs = self.get_dummy_inputs(torch_device)
        inputs["batch_size"] = 2
        images = pipe(**inputs).images
        self.assertEqual(images.shape, (2, IMAGE_SIZE, IMAGE_SIZE, 3))
        ids = pipe(**{**self.get_dummy_inputs(torch_device), "output_type": "latent"}).images
        self.assertEqual(tuple(ids.shape), (1, NUM_IMAGE_TOKENS))
        self.assertTrue(bool((ids < pipe.transformer.config.codebook_size).all()))

    def test_generator_list_matches_single_generators(self):
        pipe = self.pipeline_class(**self.get_dummy_components()).to(torch_device)
        pipe.set_progress_bar_config(disable=None)
        inputs = self.get_dummy_inputs(torch_device)
        inputs.update(batch_size=2, generator=[make_generator(torch_device, 0), make_generator(torch_device, 1)])
        batched = pipe(**inputs).images
        for seed in (0, 1):
            single = pipe(**self.get_dummy_inputs(torch_device, seed=seed)).images
            torch.testing.assert_close(torch.from_numpy(batched[seed]), torch.from_numpy(single[0]))
