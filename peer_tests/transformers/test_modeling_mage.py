"""transformers' common model and config tests for MAGE, in the shape of transformers' ViTMAE / I-JEPA tests.

peer_tests/run.py copies this file to `.peer/transformers/tests/models/mage/`, beside the copy of transformers'
own `tests/`, so that the relative imports of the common testers resolve. It is not collected by mage_hf's own
test run.
"""

import math
import tempfile
import unittest

from transformers.testing_utils import require_torch, torch_device
from transformers.utils import is_torch_available

from ...test_configuration_common import ConfigTester
from ...test_modeling_common import ModelTesterMixin, floats_tensor, ids_tensor

if is_torch_available():
    import torch
    from torch import nn
    from transformers.models.auto import modeling_auto

    from mage_hf import MageConfig, MageForImageClassification, MageForMaskedImageModeling, MageModel

# The common tests recognise a model's role (base model: no loss, skipped by the training tests; image classifier:
# gets `labels`) by its class name in transformers' static *_MAPPING_NAMES tables. An in-library model is listed
# there; a third-party model is registered with the Auto classes at import time instead, which does not touch those
# tables. For the duration of this module, list MAGE there as transformers would if MAGE were in the library.
_STATIC_NAMES = {
    "MODEL_MAPPING_NAMES": "MageModel",
    "MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES": "MageForImageClassification",
}


def setUpModule():
    for table, class_name in _STATIC_NAMES.items():
        getattr(modeling_auto, table)["mage"] = class_name


def tearDownModule():
    for table in _STATIC_NAMES:
        getattr(modeling_auto, table).pop("mage", None)


class MageModelTester:
    """Small MAGE models (the `tiny` preset: 32 px images, a 3-level VQGAN -> 8 x 8 tokens, codebook 64) and
    their inputs: `pixel_values` in [0, 1], which the model tokenizes with its own VQGAN."""

    def __init__(
        self,
        parent,
        batch_size=5,
        image_size=32,
        num_channels=3,
        is_training=True,
        use_labels=True,
        codebook_size=64,
        num_class_slots=10,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        decoder_hidden_size=32,
        decoder_num_hidden_layers=2,
        decoder_num_attention_heads=4,
        hidden_dropout_prob=0.1,
        attention_probs_dropout_prob=0.1,
        num_labels=3,
        mask_ratio_min=0.5,
        attn_implementation="eager",
    ):
        self.parent = parent
        self.batch_size = batch_size
        self.image_size = image_size
        self.num_channels = num_channels
        self.is_training = is_training
        self.use_labels = use_labels
        self.codebook_size = codebook_size
        self.num_class_slots = num_class_slots
        self.hidden_size = hidden_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.decoder_hidden_size = decoder_hidden_size
        self.decoder_num_hidden_layers = decoder_num_hidden_layers
        self.decoder_num_attention_heads = decoder_num_attention_heads
        self.hidden_dropout_prob = hidden_dropout_prob
        self.attention_probs_dropout_prob = attention_probs_dropout_prob
        self.num_labels = num_labels
        self.type_sequence_label_size = num_labels
        self.mask_ratio_min = mask_ratio_min
        self.attn_implementation = attn_implementation

        # The tiny VQGAN downsamples by 4: (32 / 4) ** 2 = 64 image tokens, plus the condition token at position 0.
        self.num_image_tokens = (image_size // 4) ** 2
        self.seq_length = 1 + self.num_image_tokens
        self.num_dropped_tokens = math.ceil(self.num_image_tokens * mask_ratio_min)
        # For the common tests that build a `bool_masked_pos` (eager vs SDPA): masks cover the image tokens only.
        self.num_masks = self.num_image_tokens // 2
        self.mask_length = self.num_image_tokens

    def get_config(self):
        return MageConfig.from_preset(
            "tiny",
            image_size=self.image_size,
            num_channels=self.num_channels,
            codebook_size=self.codebook_size,
            num_class_slots=self.num_class_slots,
            hidden_size=self.hidden_size,
            num_hidden_layers=self.num_hidden_layers,
            num_attention_heads=self.num_attention_heads,
            decoder_hidden_size=self.decoder_hidden_size,
            decoder_num_hidden_layers=self.decoder_num_hidden_layers,
            decoder_num_attention_heads=self.decoder_num_attention_heads,
            hidden_dropout_prob=self.hidden_dropout_prob,
            attention_probs_dropout_prob=self.attention_probs_dropout_prob,
            mask_ratio_min=self.mask_ratio_min,
            num_labels=self.num_labels,
            attn_implementation=self.attn_implementation,
        )

    def prepare_config_and_inputs(self):
        pixel_values = floats_tensor([self.batch_size, self.num_channels, self.image_size, self.image_size])
        labels = ids_tensor([self.batch_size], self.type_sequence_label_size) if self.use_labels else None
        return self.get_config(), pixel_values, labels

    def create_and_check_model(self, config, pixel_values, labels):
        model = MageModel(config).to(torch_device).eval()
        result = model(pixel_values)
        self.parent.assertEqual(result.last_hidden_state.shape, (self.batch_size, self.seq_length, self.hidden_size))
        self.parent.assertEqual(result.pooler_output.shape, (self.batch_size, self.hidden_size))

        # The same sequence given as token ids: condition token first, then the VQGAN tokens of the image.
        input_ids = model.build_input_ids(model.tokenize(pixel_values))
        from_ids = model(input_ids=input_ids)
        torch.testing.assert_close(from_ids.last_hidden_state, result.last_hidden_state)

    def create_and_check_for_masked_image_modeling(self, config, pixel_values, labels):
        model = MageForMaskedImageModeling(config).to(torch_device).eval()
        # Pretraining: masks sampled as in the original, `ceil(N * mask_ratio_min)` tokens dropped from the encoder.
        result = model(pixel_values, generator=torch.Generator().manual_seed(0))
        vocab_size = config.codebook_size + config.num_class_slots + 1
        self.parent.assertEqual(result.logits.shape, (self.batch_size, self.seq_length, vocab_size))
        self.parent.assertEqual(result.loss.shape, ())
        self.parent.assertEqual(result.bool_masked_pos.shape, (self.batch_size, self.num_image_tokens))
        self.parent.assertTrue(bool((result.bool_dropped_pos.sum(dim=1) == self.num_dropped_tokens).all()))
        kept = self.seq_length - self.num_dropped_tokens
        self.parent.assertEqual(result.encoder_last_hidden_state.shape, (self.batch_size, kept, self.hidden_size))

        # Generation: token ids with mask ids at the unknown positions, nothing dropped.
        input_ids = ids_tensor([self.batch_size, self.seq_length], config.codebook_size)
        input_ids[:, 0] = config.fake_class_id
        input_ids[:, 1::2] = config.mask_token_id
        result = model(input_ids=input_ids)
        self.parent.assertEqual(result.logits.shape, (self.batch_size, self.seq_length, vocab_size))
        self.parent.assertTrue(bool((result.bool_masked_pos == (input_ids[:, 1:] == config.mask_token_id)).all()))

    def create_and_check_for_image_classification(self, config, pixel_values, labels):
        model = MageForImageClassification(config).to(torch_device).eval()
        result = model(pixel_values, labels=labels)
        self.parent.assertEqual(result.logits.shape, (self.batch_size, self.type_sequence_label_size))

        # greyscale images
        config.num_channels = 1
        config.vq_config = {**config.vq_config, "in_channels": 1}
        model = MageForImageClassification(config).to(torch_device).eval()
        pixel_values = floats_tensor([self.batch_size, 1, self.image_size, self.image_size])
        result = model(pixel_values)
        self.parent.assertEqual(result.logits.shape, (self.batch_size, self.type_sequence_label_size))

    def prepare_config_and_inputs_for_common(self):
        config, pixel_values, labels = self.prepare_config_and_inputs()
        return config, {"pixel_values": pixel_values}


@require_torch
class MageModelTest(ModelTesterMixin, unittest.TestCase):
    """
    Here we also overwrite some of the tests of test_modeling_common.py, as MAGE does not use input_ids (as its main
    input), inputs_embeds, attention_mask and seq_length the way text models do.
    """

    all_model_classes = (
        (MageModel, MageForMaskedImageModeling, MageForImageClassification) if is_torch_available() else ()
    )
    pipeline_model_mapping = (
        {"image-feature-extraction": MageModel, "image-classification": MageForImageClassification}
        if is_torch_available()
        else {}
    )

    test_resize_embeddings = False
    test_torch_exportable = True

    def setUp(self):
        self.model_tester = MageModelTester(self)
        # ViTMAE passes hidden_size=37; MageConfig validates hidden_size % num_attention_heads (12 by default).
        self.config_tester = ConfigTester(self, config_class=MageConfig, has_text_modality=False, hidden_size=48)

    def _prepare_for_class(self, inputs_dict, model_class, return_labels=False):
        inputs_dict = super()._prepare_for_class(inputs_dict, model_class, return_labels=return_labels)
        pixel_values = inputs_dict.get("pixel_values")
        batch_size = self.model_tester.batch_size if pixel_values is None else pixel_values.shape[0]
        if model_class is MageForMaskedImageModeling and "bool_masked_pos" not in inputs_dict:
            # A fixed mask (every other image token), as for ViT/BEiT masked image modeling: without it the model
            # samples a random mask per forward, like ViTMAE's random noise.
            bool_masked_pos = torch.zeros(batch_size, self.model_tester.num_image_tokens, dtype=torch.bool)
            bool_masked_pos[:, ::2] = True
            inputs_dict["bool_masked_pos"] = bool_masked_pos.to(torch_device)
        return inputs_dict

    def test_config(self):
        self.config_tester.run_common_tests()

    @unittest.skip(reason="MAGE does not use inputs_embeds")
    def test_inputs_embeds(self):
        pass

    def test_model_outputs_equivalence(self):
        # The common test builds its failure message eagerly with `tuple_value - dict_value`, which torch refuses
        # for BoolTensor outputs (our `bool_masked_pos` / `bool_dropped_pos`, as Hiera's). Same check: tuple and
        # dict outputs equal, with and without hidden states / attentions; bool tensors compared exactly.
        config, inputs_dict = self.model_tester.prepare_config_and_inputs_for_common()

        def check(tuple_value, dict_value):
            if isinstance(tuple_value, (list, tuple)):
                for a, b in zip(tuple_value, dict_value, strict=True):
                    check(a, b)
            elif tuple_value is not None:
                if tuple_value.dtype == torch.bool:
                    self.assertTrue(torch.equal(tuple_value, dict_value))
                else:
                    torch.testing.assert_close(tuple_value, dict_value, atol=1e-5, rtol=1e-5, equal_nan=True)

        for model_class in self.all_model_classes:
            model = model_class(config).to(torch_device).eval()
            for extra in ({}, {"output_hidden_states": True}, {"output_attentions": True}):
                inputs = self._prepare_for_class(inputs_dict, model_class)
                with torch.no_grad():
                    as_tuple = model(**inputs, return_dict=False, **extra)
                    as_dict = model(**inputs, return_dict=True, **extra).to_tuple()
                check(as_tuple, as_dict)

    def test_model_get_set_embeddings(self):
        config, _ = self.model_tester.prepare_config_and_inputs_for_common()
        for model_class in self.all_model_classes:
            model = model_class(config)
            self.assertIsInstance(model.get_input_embeddings(), nn.Embedding)
            x = model.get_output_embeddings()
            self.assertTrue(x is None or isinstance(x, nn.Linear))

    def test_model(self):
        config_and_inputs = self.model_tester.prepare_config_and_inputs()
        self.model_tester.create_and_check_model(*config_and_inputs)

    def test_for_masked_image_modeling(self):
        config_and_inputs = self.model_tester.prepare_config_and_inputs()
        self.model_tester.create_and_check_for_masked_image_modeling(*config_and_inputs)

    def test_for_image_classification(self):
        config_and_inputs = self.model_tester.prepare_config_and_inputs()
        self.model_tester.create_and_check_for_image_classification(*config_and_inputs)

    def test_save_load_pretraining_masks(self):
        # As ViTMAE's test_save_load: the sampled pretraining masks are reproducible with a seeded generator.
        config, inputs_dict = self.model_tester.prepare_config_and_inputs_for_common()
        model = MageForMaskedImageModeling(config).to(torch_device).eval()
        with torch.no_grad():
            before = model(**inputs_dict, generator=torch.Generator().manual_seed(2))
        with tempfile.TemporaryDirectory() as tmpdirname:
            model.save_pretrained(tmpdirname)
            model = MageForMaskedImageModeling.from_pretrained(tmpdirname).to(torch_device).eval()
        with torch.no_grad():
            after = model(**inputs_dict, generator=torch.Generator().manual_seed(2))
        self.assertTrue(torch.equal(before.bool_masked_pos, after.bool_masked_pos))
        torch.testing.assert_close(after.logits, before.logits, atol=1e-5, rtol=1e-5)
