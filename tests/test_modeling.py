"""Behaviour of the transformers models and the config: round trips, Auto classes, attention backends, errors."""

from __future__ import annotations

import math

import pytest
import torch
from transformers import AutoConfig, AutoModel, AutoModelForImageClassification

import mage_hf
from mage_hf import (
    MageConfig,
    MageForImageClassification,
    MageForMaskedImageModeling,
    MageModel,
)
from conftest import assert_close

# A second shape, unlike the golden set's: other widths, heads, codebook, image size and VQ depth.
OTHER_SHAPE = dict(
    image_size=16, codebook_size=48, num_class_slots=100, hidden_size=48, num_hidden_layers=3,
    num_attention_heads=6, decoder_hidden_size=32, decoder_num_hidden_layers=1, decoder_num_attention_heads=2,
    max_position_embeddings=17, vq_config={"block_out_channels": [32, 32, 32], "layers_per_block": 1,
                                           "latent_channels": 16, "vq_embed_dim": 16, "norm_num_groups": 8},
)


@pytest.fixture(params=["tiny", "other"])
def config(request) -> MageConfig:
    if request.param == "tiny":
        return MageConfig.from_preset("tiny")
    return MageConfig(**OTHER_SHAPE)


def _pixels(config: MageConfig, batch: int = 2, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(batch, config.num_channels, config.image_size, config.image_size, generator=generator)


def test_config_derived_ids_follow_the_release():
    config = MageConfig()
    assert (config.vocab_size, config.mask_token_id, config.fake_class_id) == (2025, 2024, 1100)
    assert (config.num_image_tokens, config.token_grid_size, config.num_dropped_tokens) == (256, 16, 128)
    large = MageConfig.from_preset("mage-vit-l")
    assert (large.hidden_size, large.num_hidden_layers, large.num_attention_heads) == (1024, 24, 16)


def test_config_round_trip(tmp_path, config):
    config.save_pretrained(tmp_path)
    loaded = AutoConfig.from_pretrained(tmp_path)
    assert isinstance(loaded, MageConfig)
    assert loaded.to_diff_dict() | {"_name_or_path": ""} == config.to_diff_dict() | {"_name_or_path": ""}
    assert loaded.fake_class_id == config.fake_class_id and loaded.vq_config == config.vq_config


def test_class_conditional_ids_never_collide():
    config = MageConfig.from_preset("tiny", num_condition_classes=100)
    condition_ids = {config.condition_token_id(c) for c in range(100)}
    assert config.fake_class_id not in condition_ids
    assert config.codebook_size <= config.fake_class_id < config.mask_token_id
    with pytest.raises(ValueError, match="fake_class_id"):
        MageConfig.from_preset("tiny", num_condition_classes=100, fake_class_id=64 + 76)
    with pytest.raises(ValueError, match="class_label"):
        config.condition_token_id(100)


@pytest.mark.parametrize(
    "overrides, match",
    [
        ({"num_attention_heads": 5}, "num_attention_heads"),
        ({"decoder_num_attention_heads": 3}, "decoder_num_attention_heads"),
        ({"max_position_embeddings": 10}, "max_position_embeddings"),
        ({"image_size": 30}, "image_size"),
        ({"mask_ratio_min": 0.0}, "mask_ratio"),
        ({"num_condition_classes": 5000}, "num_condition_classes"),
    ],
)
def test_config_rejects_inconsistent_sizes(overrides, match):
    with pytest.raises(ValueError, match=match):
        MageConfig.from_preset("tiny", **overrides)


def test_unknown_preset():
    with pytest.raises(ValueError, match="name"):
        MageConfig.from_preset("vit-h")


@torch.no_grad()
def test_feature_model_outputs(config):
    model = MageModel(config).eval()
    out = model(pixel_values=_pixels(config), output_hidden_states=True, output_attentions=False)
    length = 1 + config.num_image_tokens
    assert out.last_hidden_state.shape == (2, length, config.hidden_size)
    assert out.last_hidden_state.dtype == torch.float32
    assert out.pooler_output.shape == (2, config.hidden_size)
    assert len(out.hidden_states) == config.num_hidden_layers + 1
    # hidden_states[-1] is before the final LayerNorm; last_hidden_state after it.
    assert_close(model.layernorm(out.hidden_states[-1]), out.last_hidden_state, atol=1e-6)
    as_tuple = model(pixel_values=_pixels(config), return_dict=False)
    assert_close(as_tuple[0], out.last_hidden_state, atol=0)


@torch.no_grad()
def test_eager_attention_returns_maps(config):
    model = MageModel._from_config(config, attn_implementation="eager").eval()
    out = model(pixel_values=_pixels(config), output_attentions=True)
    length = 1 + config.num_image_tokens
    assert len(out.attentions) == config.num_hidden_layers
    assert out.attentions[0].shape == (2, config.num_attention_heads, length, length)
    assert_close(out.attentions[0].sum(-1), torch.ones(2, config.num_attention_heads, length), atol=1e-5)


@torch.no_grad()
def test_sdpa_and_eager_agree(config):
    torch.manual_seed(0)
    model = MageForMaskedImageModeling._from_config(config, attn_implementation="eager").eval()
    ids = model.mage.build_input_ids(model.mage.tokenize(_pixels(config)))
    masked, dropped = model.sample_masks(2, torch.Generator().manual_seed(1))
    eager = model(input_ids=ids, bool_masked_pos=masked, bool_dropped_pos=dropped).logits
    model.set_attn_implementation("sdpa")
    assert model.decoder.layers[0].attention.config._attn_implementation == "sdpa"
    sdpa = model(input_ids=ids, bool_masked_pos=masked, bool_dropped_pos=dropped).logits
    assert_close(sdpa, eager, atol=1e-5, name="sdpa vs eager")


@torch.no_grad()
def test_save_load_round_trip(tmp_path, config):
    torch.manual_seed(0)
    model = MageForMaskedImageModeling(config).eval()
    ids = model.mage.build_input_ids(model.mage.tokenize(_pixels(config)))
    expected = model(input_ids=ids).logits
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").is_file()
    loaded = MageForMaskedImageModeling.from_pretrained(tmp_path).eval()
    assert_close(loaded(input_ids=ids).logits, expected, atol=0, name="reloaded logits")
    # AutoModel on a pretraining folder gives the feature model with the same encoder.
    features = AutoModel.from_pretrained(tmp_path).eval()
    assert isinstance(features, MageModel)
    assert_close(features(input_ids=ids).last_hidden_state, model.mage(input_ids=ids).last_hidden_state, atol=0)


@torch.no_grad()
def test_classifier_from_pretraining_folder(tmp_path):
    config = MageConfig.from_preset("tiny")
    torch.manual_seed(0)
    MageForMaskedImageModeling(config).save_pretrained(tmp_path)
    model = AutoModelForImageClassification.from_pretrained(tmp_path, num_labels=3, id2label={0: "a", 1: "b", 2: "c"})
    assert isinstance(model, MageForImageClassification)
    out = model(pixel_values=_pixels(config), labels=torch.tensor([0, 2]))
    assert out.logits.shape == (2, 3) and out.loss.ndim == 0 and torch.isfinite(out.loss)
    assert model.config.id2label[2] == "c"


def test_linear_probe_head_uses_batchnorm():
    config = MageConfig.from_preset("tiny", num_labels=4, use_linear_probe_bn=True)
    model = MageForImageClassification(config)
    assert isinstance(model.head_norm, torch.nn.BatchNorm1d) and not model.head_norm.affine
    model.train()
    out = model(pixel_values=_pixels(config, batch=4), labels=torch.tensor([0, 1, 2, 3]))
    out.loss.backward()
    assert model.head.weight.grad is not None
    assert all(p.grad is None for p in model.mage.vqgan.parameters())


def test_sampled_masks_follow_the_original_rule(config):
    model = MageForMaskedImageModeling(config)
    num_tokens = config.num_image_tokens
    for seed in range(20):
        masked, dropped = model.sample_masks(3, torch.Generator().manual_seed(seed))
        num_masked = masked.sum(1)
        assert (num_masked == num_masked[0]).all()
        ratio_low = math.ceil(num_tokens * config.mask_ratio_min)
        assert ratio_low <= num_masked[0] <= num_tokens
        assert (dropped.sum(1) == config.num_dropped_tokens).all()
        assert not (dropped & ~masked).any()
    a = model.sample_masks(2, torch.Generator().manual_seed(7))
    b = model.sample_masks(2, torch.Generator().manual_seed(7))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_mask_ratio_distribution_is_the_truncated_normal():
    """Mean of the sampled ratio matches the truncated normal(0.55, 0.25) on [0.5, 1] (~0.7 over many draws)."""
    config = MageConfig.from_preset("tiny", image_size=256, max_position_embeddings=4097)
    model = MageForMaskedImageModeling(config)
    generator = torch.Generator().manual_seed(0)
    ratios = torch.tensor([model.sample_masks(1, generator)[0].float().mean().item() for _ in range(400)])
    normal = torch.distributions.Normal(0.0, 1.0)
    a, b = torch.tensor((0.5 - 0.55) / 0.25), torch.tensor((1.0 - 0.55) / 0.25)
    expected_mean = 0.55 + 0.25 * (normal.log_prob(a).exp() - normal.log_prob(b).exp()) / (normal.cdf(b) - normal.cdf(a))
    assert ratios.min() >= 0.5 and ratios.max() <= 1.0
    assert abs(ratios.mean().item() - expected_mean.item()) < 0.02


def test_pretraining_step_trains_and_keeps_tokenizer_frozen():
    config = MageConfig.from_preset("tiny")
    torch.manual_seed(0)
    model = MageForMaskedImageModeling(config).train()
    vq_before = {k: v.clone() for k, v in model.mage.vqgan.state_dict().items()}
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    pixels = _pixels(config, batch=4)
    losses = []
    for step in range(30):
        out = model(pixel_values=pixels, generator=torch.Generator().manual_seed(step % 3))
        optimizer.zero_grad()
        out.loss.backward()
        optimizer.step()
        losses.append(out.loss.item())
    assert sum(losses[-3:]) / 3 < losses[0] - 0.2
    for key, value in model.mage.vqgan.state_dict().items():
        assert torch.equal(value, vq_before[key]), key


def test_class_conditional_forward():
    config = MageConfig.from_preset("tiny", num_condition_classes=10, condition_dropout_prob=0.0)
    model = MageForMaskedImageModeling(config).eval()
    pixels = _pixels(config)
    masks = model.sample_masks(2, torch.Generator().manual_seed(0))
    a = model(pixel_values=pixels, class_labels=torch.tensor([1, 2]), bool_masked_pos=masks[0]).logits
    b = model(pixel_values=pixels, class_labels=torch.tensor([3, 2]), bool_masked_pos=masks[0]).logits
    assert not torch.allclose(a[0], b[0]) and torch.allclose(a[1], b[1], atol=1e-6)
    with pytest.raises(ValueError, match="class_labels"):
        model(pixel_values=pixels, class_labels=torch.tensor([1, 10]))
    unconditional = MageForMaskedImageModeling(MageConfig.from_preset("tiny"))
    with pytest.raises(ValueError, match="class_labels"):
        unconditional(pixel_values=pixels, class_labels=torch.tensor([1, 2]))


def test_condition_dropout_in_training():
    config = MageConfig.from_preset("tiny", num_condition_classes=10, condition_dropout_prob=0.5)
    model = MageForMaskedImageModeling(config).train()
    condition = model._condition_ids(torch.zeros(400, dtype=torch.long), 400, torch.Generator().manual_seed(0), "cpu")
    dropped = (condition == config.fake_class_id).float().mean().item()
    assert 0.4 < dropped < 0.6
    model.eval()
    assert (model._condition_ids(torch.zeros(50, dtype=torch.long), 50, None, "cpu") == config.codebook_size).all()


def test_model_without_tokenizer_takes_ids_only():
    config = MageConfig.from_preset("tiny", include_vq_tokenizer=False)
    model = MageForMaskedImageModeling(config).eval()
    assert model.mage.vqgan is None
    ids = torch.full((1, 1 + config.num_image_tokens), config.mask_token_id)
    ids[:, 0] = config.fake_class_id
    assert model(input_ids=ids).logits.shape == (1, 1 + config.num_image_tokens, config.vocab_size)
    with pytest.raises(ValueError, match="include_vq_tokenizer"):
        model(pixel_values=_pixels(config, batch=1))


class TestBadInput:
    @pytest.fixture(scope="class")
    def model(self):
        return MageForMaskedImageModeling(MageConfig.from_preset("tiny")).eval()

    def test_wrong_image_size(self, model):
        with pytest.raises(ValueError, match="pixel_values.*32, 32"):
            model(pixel_values=torch.rand(1, 3, 48, 48))

    def test_wrong_channels(self, model):
        with pytest.raises(ValueError, match="pixel_values"):
            model(pixel_values=torch.rand(1, 1, 32, 32))

    def test_not_a_tensor(self, model):
        with pytest.raises(TypeError, match="pixel_values"):
            model(pixel_values=[[0.0]])

    def test_both_or_neither_input(self, model):
        with pytest.raises(ValueError, match="exactly one"):
            model()
        with pytest.raises(ValueError, match="exactly one"):
            model(pixel_values=torch.rand(1, 3, 32, 32), input_ids=torch.zeros(1, 65, dtype=torch.long))

    def test_mask_shape_mismatch(self, model):
        with pytest.raises(ValueError, match="bool_masked_pos.*shape"):
            model(pixel_values=torch.rand(2, 3, 32, 32), bool_masked_pos=torch.ones(2, 10, dtype=torch.bool))

    def test_dropped_not_subset_of_masked(self, model):
        masked = torch.zeros(1, 64, dtype=torch.bool)
        masked[:, :10] = True
        dropped = torch.zeros(1, 64, dtype=torch.bool)
        dropped[:, 20:25] = True
        with pytest.raises(ValueError, match="subset"):
            model(pixel_values=torch.rand(1, 3, 32, 32), bool_masked_pos=masked, bool_dropped_pos=dropped)

    def test_dropped_without_masked(self, model):
        with pytest.raises(ValueError, match="bool_masked_pos"):
            model(pixel_values=torch.rand(1, 3, 32, 32), bool_dropped_pos=torch.zeros(1, 64, dtype=torch.bool))

    def test_uneven_drop_counts(self, model):
        masked = torch.ones(2, 64, dtype=torch.bool)
        dropped = torch.zeros(2, 64, dtype=torch.bool)
        dropped[0, :4] = True
        dropped[1, :5] = True
        with pytest.raises(ValueError, match="same number"):
            model(pixel_values=torch.rand(2, 3, 32, 32), bool_masked_pos=masked, bool_dropped_pos=dropped)

    def test_ids_out_of_vocabulary(self, model):
        ids = torch.zeros(1, 65, dtype=torch.long)
        ids[0, 3] = model.config.vocab_size
        with pytest.raises(ValueError, match="input_ids.*vocab_size"):
            model(input_ids=ids)
        with pytest.raises(ValueError, match="input_ids"):
            model(input_ids=-torch.ones(1, 65, dtype=torch.long))

    def test_ids_wrong_length_or_dtype(self, model):
        with pytest.raises(ValueError, match="input_ids.*shape"):
            model(input_ids=torch.zeros(1, 64, dtype=torch.long))
        with pytest.raises(TypeError, match="input_ids"):
            model(input_ids=torch.zeros(1, 65))

    def test_labels_out_of_codebook(self, model):
        ids = torch.zeros(1, 65, dtype=torch.long)
        with pytest.raises(ValueError, match="labels"):
            model(input_ids=ids, labels=torch.full((1, 64), model.config.codebook_size))


def test_package_registers_auto_classes():
    assert AutoConfig.for_model("mage").__class__ is MageConfig
    assert mage_hf.__version__
