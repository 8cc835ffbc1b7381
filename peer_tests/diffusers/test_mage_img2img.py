"""diffusers' PipelineTesterMixin for MagePipeline, image-to-image (`image` + `strength`; modelled on aMUSEd's
img2img pipeline tests). Copied by peer_tests/run.py to `.peer/diffusers/tests/pipelines/mage/`."""

import unittest

import torch

from mage_hf import MagePipeline

from ..pipeline_params import IMAGE_VARIATION_BATCH_PARAMS, IMAGE_VARIATION_PARAMS
from ..test_pipelines_common import PipelineTesterMixin
from ...testing_utils import enable_full_determinism, torch_device
from .mage_dummies import IMAGE_SIZE, NUM_IMAGE_TOKENS, dummy_image, get_mage_dummy_components, make_generator
from .test_mage_unconditional import NO_CFG

enable_full_determinism()


class MageImg2ImgPipelineFastTests(PipelineTesterMixin, unittest.TestCase):
    pipeline_class = MagePipeline
    params = IMAGE_VARIATION_PARAMS - {"height", "width"}
    batch_params = IMAGE_VARIATION_BATCH_PARAMS
    # As aMUSEd's img2img: the starting tokens come from `image`, so `latents` is not part of this use.
    required_optional_params = PipelineTesterMixin.required_optional_params - {"latents"}

    def get_dummy_components(self):
        return get_mage_dummy_components(num_condition_classes=0)

    def get_dummy_inputs(self, device, seed=0):
        return {
            "image": dummy_image(device),
            "strength": 0.5,
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

    def test_strength_keeps_part_of_the_image_tokens(self):
        """As aMUSEd's img2img: strength 0.5 of 2 steps runs the last step, from the image with the schedule's
        fraction of its tokens masked; the other tokens come back unchanged."""
        pipe = self.pipeline_class(**self.get_dummy_components()).to(torch_device)
        pipe.set_progress_bar_config(disable=None)
        inputs = self.get_dummy_inputs(torch_device)
        original = pipe.vqvae.tokenize(inputs["image"])
        pipe.scheduler.set_timesteps(inputs["num_inference_steps"])
        start = pipe.scheduler.add_noise(original, pipe.scheduler.timesteps[1], generator=make_generator(torch_device, 0))
        masked = start == pipe.transformer.config.mask_token_id
        self.assertTrue(0 < int(masked.sum()) < NUM_IMAGE_TOKENS)
        self.assertTrue(torch.equal(start[~masked], original[~masked]))
        images = pipe(**inputs).images
        self.assertEqual(images.shape, (1, IMAGE_SIZE, IMAGE_SIZE, 3))
