"""transformers' common image-processor tests for `MageImageProcessor` (copied by peer_tests/run.py to
`.peer/transformers/tests/models/mage/`)."""

import unittest
from unittest import mock

import numpy as np

from transformers.testing_utils import require_torch, require_vision
from transformers.utils import is_torch_available, is_vision_available

from ... import test_image_processing_common
from ...test_image_processing_common import ImageProcessingTestMixin, ImageProcessingTester

if is_torch_available():
    import torch

if is_vision_available():
    from transformers.models.auto.image_processing_auto import IMAGE_PROCESSOR_MAPPING

    from mage_hf import MageConfig


class MageImageProcessingTester(ImageProcessingTester):
    def __init__(self, parent, **kwargs):
        kwargs.setdefault("image_size", 18)
        kwargs.setdefault("do_resize", True)
        kwargs.setdefault("size", {"shortest_edge": 20})
        kwargs.setdefault("do_center_crop", True)
        kwargs.setdefault("crop_size", {"height": 18, "width": 18})
        kwargs.setdefault("do_rescale", True)
        kwargs.setdefault("do_normalize", False)
        kwargs.setdefault("do_convert_rgb", True)
        super().__init__(parent, **kwargs)

    def _get_image_processing_classes(self):
        # The base class looks the folder name ("mage") up in the static IMAGE_PROCESSOR_MAPPING_NAMES; a
        # third-party model's processors are registered at import time, so read the registered mapping instead.
        classes = super()._get_image_processing_classes()
        return classes or dict(IMAGE_PROCESSOR_MAPPING[MageConfig])


@require_torch
@require_vision
class MageImageProcessingTest(ImageProcessingTestMixin, unittest.TestCase):
    image_processor_tester_class = MageImageProcessingTester

    def test_backends_equivalence(self):
        # The common test downloads the COCO cats photo; offline, the same test runs on the photo matplotlib ships.
        import matplotlib.cbook
        from PIL import Image

        photo = Image.open(matplotlib.cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)).convert("RGB")
        with mock.patch.object(test_image_processing_common, "load_test_image", return_value=photo):
            super().test_backends_equivalence()


    def test_image_processor_properties(self):
        for image_processing_class in self.image_processing_classes.values():
            image_processing = image_processing_class(**self.image_processor_dict)
            for name in ("do_resize", "size", "do_center_crop", "crop_size", "do_rescale", "rescale_factor",
                         "do_normalize", "do_convert_rgb"):
                self.assertTrue(hasattr(image_processing, name), name)

    def test_image_processor_from_dict_with_kwargs(self):
        for image_processing_class in self.image_processing_classes.values():
            image_processor = image_processing_class.from_dict(self.image_processor_dict)
            self.assertEqual(image_processor.size, {"shortest_edge": 20})
            self.assertEqual(image_processor.crop_size, {"height": 18, "width": 18})

            image_processor = image_processing_class.from_dict(self.image_processor_dict, size=42, crop_size=84)
            self.assertEqual(image_processor.size, {"shortest_edge": 42})
            self.assertEqual(image_processor.crop_size, {"height": 84, "width": 84})

    def test_output_in_unit_range_without_normalization(self):
        # MAGE's tokenizer reads pixels in [0, 1]: rescale only, no mean/std.
        for image_processing_class in self.image_processing_classes.values():
            image_processor = image_processing_class(**self.image_processor_dict)
            images = self.image_processor_tester.prepare_image_inputs(equal_resolution=False)
            pixel_values = image_processor(images, return_tensors="pt").pixel_values
            self.assertEqual(pixel_values.dtype, torch.float32)
            self.assertGreaterEqual(float(pixel_values.min()), 0.0)
            self.assertLessEqual(float(pixel_values.max()), 1.0)
            image = np.full((24, 24, 3), 255, dtype=np.uint8)
            self.assertTrue(bool((image_processor(image, return_tensors="pt").pixel_values == 1.0).all()))
