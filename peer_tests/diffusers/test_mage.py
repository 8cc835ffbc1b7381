"""diffusers' PipelineTesterMixin for MagePipeline, class-conditional generation (modelled on aMUSEd's and DiT's
pipeline tests). Copied by peer_tests/run.py to `.peer/diffusers/tests/pipelines/mage/`.

Written for the pipeline API as it is meant to be: `class_labels` accepted beside `class_label` (the name of
diffusers' CLASS_CONDITIONED_IMAGE_GENERATION_PARAMS), a `latents=` argument of (B, N) initial token ids, and the
step-end callback tensor named `latents`.
"""

import unittest

import numpy as np
import torch

from mage_hf import MageForMaskedImageModeling, MagePipeline

from ..pipeline_params import CLASS_CONDITIONED_IMAGE_GENERATION_BATCH_PARAMS, CLASS_CONDITIONED_IMAGE_GENERATION_PARAMS
from ..test_pipelines_common import PipelineTesterMixin
from ...testing_utils import enable_full_determinism, torch_device
from .mage_dummies import IMAGE_SIZE, NUM_IMAGE_TOKENS, get_mage_dummy_components, make_generator

enable_full_determinism()


class MagePipelineFastTests(PipelineTesterMixin, unittest.TestCase):
    pipeline_class = MagePipeline
    params = CLASS_CONDITIONED_IMAGE_GENERATION_PARAMS | {"guidance_scale"}
    batch_params = CLASS_CONDITIONED_IMAGE_GENERATION_BATCH_PARAMS
    callback_cfg_params = frozenset()

    def get_dummy_components(self):
        return get_mage_dummy_components(num_condition_classes=4)

    def get_dummy_inputs(self, device, seed=0):
        return {
            "class_labels": 1,
            "generator": make_generator(device, seed),
            "num_inference_steps": 2,
            "output_type": "np",
        }

    def _pipe(self):
        pipe = self.pipeline_class(**self.get_dummy_components())
        pipe.to(torch_device)
        pipe.set_progress_bar_config(disable=None)
        return pipe

    def test_inference(self):
        pipe = self._pipe()
        images = pipe(**self.get_dummy_inputs(torch_device)).images
        self.assertEqual(images.shape, (1, IMAGE_SIZE, IMAGE_SIZE, 3))
        self.assertTrue(0.0 <= float(images.min()) and float(images.max()) <= 1.0)

    def test_class_label_alias(self):
        pipe = self._pipe()
        inputs = self.get_dummy_inputs(torch_device)
        with_labels = pipe(**inputs).images
        inputs = self.get_dummy_inputs(torch_device)
        inputs["class_label"] = inputs.pop("class_labels")
        with_label = pipe(**inputs).images
        np.testing.assert_array_equal(with_labels, with_label)

    def test_class_labels_by_name(self):
        pipe = self._pipe()
        inputs = self.get_dummy_inputs(torch_device)
        by_index = pipe(**inputs).images
        inputs = self.get_dummy_inputs(torch_device)
        inputs["class_labels"] = "class_1"
        np.testing.assert_array_equal(pipe(**inputs).images, by_index)

    def test_latents_all_masked_is_the_default_start(self):
        pipe = self._pipe()
        config = pipe.transformer.config
        default = pipe(**self.get_dummy_inputs(torch_device)).images
        inputs = self.get_dummy_inputs(torch_device)
        inputs["latents"] = torch.full((1, NUM_IMAGE_TOKENS), config.mask_token_id, dtype=torch.long)
        np.testing.assert_array_equal(pipe(**inputs).images, default)

    def test_latents_known_tokens_are_kept(self):
        pipe = self._pipe()
        config = pipe.transformer.config
        latents = torch.full((1, NUM_IMAGE_TOKENS), config.mask_token_id, dtype=torch.long)
        latents[0, :4] = torch.tensor([3, 1, 4, 1])
        inputs = self.get_dummy_inputs(torch_device)
        inputs.update(latents=latents, output_type="latent")
        ids = pipe(**inputs).images
        self.assertEqual(tuple(ids.shape), (1, NUM_IMAGE_TOKENS))
        self.assertEqual(ids[0, :4].tolist(), [3, 1, 4, 1])
        self.assertFalse(bool((ids == config.mask_token_id).any()))

    def test_from_masked_image_model(self):
        components = self.get_dummy_components()
        config = components["transformer"].config.__class__.from_dict(
            {**components["transformer"].config.to_dict(), "include_vq_tokenizer": True}
        )
        model = MageForMaskedImageModeling(config)
        pipe = self.pipeline_class.from_masked_image_model(model)
        self.assertIsNone(pipe.transformer.mage.vqgan)
        self.assertEqual(pipe.scheduler.config.mask_token_id, config.mask_token_id)
        images = pipe(**self.get_dummy_inputs("cpu")).images
        self.assertEqual(images.shape, (1, IMAGE_SIZE, IMAGE_SIZE, 3))
