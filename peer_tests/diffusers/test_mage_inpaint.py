"""diffusers' PipelineTesterMixin for MagePipeline, inpainting (`image` + `mask_image`; modelled on aMUSEd's inpaint
pipeline tests). Copied by peer_tests/run.py to `.peer/diffusers/tests/pipelines/mage/`."""

import unittest

import torch

from mage_hf import MagePipeline

from ..pipeline_params import IMAGE_INPAINTING_BATCH_PARAMS, IMAGE_INPAINTING_PARAMS
from ..test_pipelines_common import PipelineTesterMixin
from ...testing_utils import enable_full_determinism, torch_device
from .mage_dummies import IMAGE_SIZE, dummy_image, dummy_mask_image, get_mage_dummy_components, make_generator
from .test_mage_unconditional import NO_CFG

enable_full_determinism()


class MageInpaintPipelineFastTests(PipelineTesterMixin, unittest.TestCase):
    pipeline_class = MagePipeline
    params = IMAGE_INPAINTING_PARAMS - {"height", "width"}
    batch_params = IMAGE_INPAINTING_BATCH_PARAMS
    # As aMUSEd's inpainting: the starting tokens come from `image`, so `latents` is not part of this use.
    required_optional_params = PipelineTesterMixin.required_optional_params - {"latents"}

    def get_dummy_components(self):
        return get_mage_dummy_components(num_condition_classes=0)

    def get_dummy_inputs(self, device, seed=0):
        return {
            "image": dummy_image(device),
            "mask_image": dummy_mask_image(device),
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

    def test_unmasked_tokens_are_kept(self):
        pipe = self.pipeline_class(**self.get_dummy_components()).to(torch_device)
        pipe.set_progress_bar_config(disable=None)
        inputs = self.get_dummy_inputs(torch_device)
        # MAGE regenerates every token whose patch touches a white mask pixel: keep the top-left 2 x 2 patch.
        inputs["mask_image"][..., :2, :2] = 0
        original = pipe.vqvae.tokenize(inputs["image"])
        keep = ~pipe.prepare_edit_mask(inputs["image"], inputs["mask_image"])
        self.assertTrue(bool(keep.any()))
        ids = pipe(**{**inputs, "output_type": "latent"}).images
        self.assertTrue(torch.equal(ids[keep], original[keep]))
        images = pipe(**inputs).images
        self.assertEqual(images.shape, (1, IMAGE_SIZE, IMAGE_SIZE, 3))
