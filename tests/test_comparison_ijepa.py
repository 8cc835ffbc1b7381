"""I-JEPA pretraining objective around transformers' IJepaModel (mage_hf.comparison.ijepa)."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModel, IJepaConfig, IJepaModel, ViTMAEConfig, ViTMAEForPreTraining

from mage_hf.comparison.ijepa import (
    IJepaForPretraining,
    IJepaPredictor,
    MultiBlockMaskSampler,
    ema_momentum,
    ijepa_for_mnist,
    sincos_2d_position_embeddings,
)


@pytest.fixture(autouse=True)
def _one_thread():
    """These models are tiny: one intra-op thread avoids oversubscription stalls on shared CPUs."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _small_model(**kwargs) -> IJepaForPretraining:
    torch.manual_seed(0)
    return ijepa_for_mnist(hidden_size=32, num_layers=2, num_heads=2, predictor_hidden_size=32, **kwargs)


@pytest.mark.parametrize("grid", [(8, 8), (14, 14), (10, 12)])
def test_mask_sampler_shapes_ranges_disjoint_and_scales(grid):
    # a square context block cannot cover 85 % of a 10x12 grid: relax its aspect ratio there
    ratio = (1.0, 1.0) if grid[0] == grid[1] else (0.75, 1.25)
    sampler = MultiBlockMaskSampler(grid, context_aspect_ratio=ratio)
    n = grid[0] * grid[1]
    for seed in range(5):
        context, targets = sampler(6, generator=_gen(seed))
        assert context.dtype == torch.long and targets.dtype == torch.long
        assert context.shape[0] == 6 and context.shape[1] >= sampler.min_context
        assert targets.shape[:2] == (4, 6)
        assert 0.15 <= targets.shape[2] / n <= 0.2
        assert int(context.min()) >= 0 and int(context.max()) < n
        assert int(targets.min()) >= 0 and int(targets.max()) < n
        for b in range(6):
            ctx = set(context[b].tolist())
            assert len(ctx) == context.shape[1]
            for k in range(4):
                block = targets[k, b]
                assert not ctx & set(block.tolist())
                rows, cols = block // grid[1], block % grid[1]
                h, w = int(rows.max() - rows.min()) + 1, int(cols.max() - cols.min()) + 1
                assert h * w == block.numel() == len(set(block.tolist()))  # a full rectangle
                assert 0.75 <= h / w <= 1.5


def test_mask_sampler_reproducible():
    sampler = MultiBlockMaskSampler((8, 8))
    a, b, c = (sampler(16, generator=_gen(seed)) for seed in (3, 3, 4))
    assert torch.equal(a.context_indices, b.context_indices) and torch.equal(
        a.target_indices, b.target_indices
    )
    assert not (
        a.context_indices.shape == c.context_indices.shape
        and torch.equal(a.context_indices, c.context_indices)
        and torch.equal(a.target_indices, c.target_indices)
    )


@pytest.mark.parametrize(
    "kwargs",
    [
        {"grid_size": (2, 2)},
        {"grid_size": (8, 8), "target_scale": (0.0, 0.2)},
        {"grid_size": (8, 8), "target_scale": (0.2, 0.1)},
        {"grid_size": (8, 8), "context_scale": (0.85, 1.5)},
        {"grid_size": (8, 8), "target_aspect_ratio": (-1.0, 1.5)},
        {"grid_size": (8, 8), "num_targets": 0},
        {"grid_size": (8, 8), "min_context": 65},
        {"grid_size": (0, 8)},
        {"grid_size": (10, 12)},  # no square context block covers 85 % of it
    ],
)
def test_mask_sampler_bad_arguments(kwargs):
    with pytest.raises(ValueError):
        MultiBlockMaskSampler(**kwargs)
    with pytest.raises(ValueError):
        MultiBlockMaskSampler((8, 8))(0)


def test_sincos_and_predictor_arguments():
    pos = sincos_2d_position_embeddings(16, (3, 5))
    assert pos.shape == (15, 16) and torch.isfinite(pos).all()
    assert len({tuple(row.tolist()) for row in pos}) == 15
    with pytest.raises(ValueError):
        sincos_2d_position_embeddings(6, 4)
    with pytest.raises(ValueError):
        IJepaPredictor(32, (4, 4), predictor_hidden_size=30, num_heads=4)
    predictor = IJepaPredictor(32, (4, 4), predictor_hidden_size=16, num_layers=1, num_heads=2)
    out = predictor(torch.randn(2, 5, 32), torch.randint(0, 16, (2, 5)), [torch.randint(0, 16, (2, 3))] * 4)
    assert out.shape == (4, 2, 3, 32)
    with pytest.raises(ValueError):
        predictor(torch.randn(2, 5, 32), torch.full((2, 5), 16), torch.zeros(4, 2, 3, dtype=torch.long))
    with pytest.raises(ValueError):
        ijepa_for_mnist(loss_type="l1")


def test_forward_loss_and_gradients():
    model = _small_model()
    loss = model(torch.randn(4, 3, 32, 32), generator=_gen(0))
    assert loss.dim() == 0 and torch.isfinite(loss)
    loss.backward()
    for name, p in model.context_encoder.named_parameters():
        if p.requires_grad:
            assert p.grad is not None, name
        else:
            assert name == "embeddings.position_embeddings" and p.grad is None
    assert all(p.grad is not None for p in model.predictor.parameters())
    assert sum(float(p.grad.abs().sum()) for p in model.trainable_parameters()) > 0
    assert all(p.grad is None and not p.requires_grad for p in model.target_encoder.parameters())
    loss_smooth = _small_model(loss_type="smooth_l1")(torch.randn(4, 3, 32, 32), generator=_gen(0))
    assert torch.isfinite(loss_smooth)


def test_context_encoder_sees_only_context_patches():
    model = _small_model().eval()
    pixels = torch.randn(3, 3, 32, 32)
    context, _ = model.mask_sampler(3, generator=_gen(1))
    keep = torch.zeros(3, 64, dtype=torch.bool)
    keep.scatter_(1, context, True)
    keep_pixels = keep.view(3, 1, 8, 1, 8, 1).expand(3, 3, 8, 4, 8, 4).reshape(3, 3, 32, 32)
    changed = torch.where(keep_pixels, pixels, torch.randn_like(pixels) * 10)
    with torch.no_grad():
        before = model.encode_context(pixels, context)
        after = model.encode_context(changed, context)
        assert torch.allclose(before, after, atol=1e-6)
        # but changing a context patch does change it
        touched = pixels.clone()
        row, col = divmod(int(context[0, 0]), 8)
        touched[0, :, row * 4 : row * 4 + 4, col * 4 : col * 4 + 4] += 1.0
        assert not torch.allclose(before[0], model.encode_context(touched, context)[0], atol=1e-4)


def test_ema_update_and_schedule():
    model = _small_model()
    with torch.no_grad():
        for p in model.context_encoder.parameters():
            p.add_(torch.randn_like(p))
    before = {k: v.clone() for k, v in model.target_encoder.state_dict().items()}
    model.update_target_encoder(1.0)
    assert all(torch.equal(v, before[k]) for k, v in model.target_encoder.state_dict().items())
    model.update_target_encoder(0.0)
    context_state = model.context_encoder.state_dict()
    assert all(torch.equal(v, context_state[k]) for k, v in model.target_encoder.state_dict().items())
    assert not any(p.requires_grad for p in model.target_encoder.parameters())
    with pytest.raises(ValueError):
        model.update_target_encoder(1.5)
    assert ema_momentum(0, 100) == pytest.approx(0.996)
    assert ema_momentum(50, 100) == pytest.approx(0.998)
    assert ema_momentum(100, 100) == ema_momentum(500, 100) == pytest.approx(1.0)
    with pytest.raises(ValueError):
        ema_momentum(1, 0)


def test_a_few_adamw_steps_reduce_the_loss():
    model = _small_model()
    pixels = torch.randn(8, 3, 32, 32, generator=_gen(5))
    masks = model.mask_sampler(8, generator=_gen(6))
    optimizer = torch.optim.AdamW(model.trainable_parameters(), lr=1e-3, weight_decay=0.05)
    losses = []
    for step in range(12):
        loss = model(pixels, masks=masks)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        model.update_target_encoder(ema_momentum(step, 12))
        losses.append(loss.item())
    assert losses[-1] < 0.8 * losses[0], losses


def test_evaluation_encoder_saves_and_reloads(tmp_path):
    model = _small_model()
    with torch.no_grad():
        for p in model.context_encoder.parameters():
            p.add_(0.01 * torch.randn_like(p))
    model.update_target_encoder(0.5)
    assert model.encoder_for_evaluation() is model.target_encoder
    model.save_evaluation_encoder(tmp_path / "target")
    model.save_context_encoder(tmp_path / "context")
    pixels = torch.randn(2, 3, 32, 32)
    for name, encoder in (("target", model.target_encoder), ("context", model.context_encoder)):
        reloaded = AutoModel.from_pretrained(tmp_path / name).eval()
        assert isinstance(reloaded, IJepaModel)
        with torch.no_grad():
            expected = encoder.eval()(pixels).last_hidden_state
            assert torch.equal(reloaded(pixels).last_hidden_state, expected)


def test_mnist_parameter_count_close_to_mae():
    model = ijepa_for_mnist()
    assert model.grid_size == (8, 8)
    ijepa_trainable = model.num_trainable_parameters()
    expected = sum(p.numel() for m in (model.context_encoder, model.predictor) for p in m.parameters())
    assert ijepa_trainable == expected - 64 * 128  # minus the frozen sin-cos position embeddings
    mae = ViTMAEForPreTraining(
        ViTMAEConfig(
            image_size=32,
            patch_size=4,
            num_channels=3,
            hidden_size=128,
            num_hidden_layers=6,
            num_attention_heads=4,
            intermediate_size=512,
            decoder_hidden_size=128,
            decoder_num_hidden_layers=3,
            decoder_num_attention_heads=4,
            decoder_intermediate_size=512,
        )
    )
    mae_trainable = sum(p.numel() for p in mae.parameters() if p.requires_grad)
    assert abs(ijepa_trainable - mae_trainable) / mae_trainable < 0.15, (ijepa_trainable, mae_trainable)
    assert isinstance(model.context_encoder.config, IJepaConfig)


def test_ijepa_task_saves_only_the_target_encoder_and_checks_its_flags():
    """`IJepaTask` (the loop's task): the final folder's state dict is the EMA target encoder's, and a decreasing
    or out-of-range `--ema-momentum` is refused before training."""
    import argparse

    from mage_hf.comparison.tasks import IJepaTask, add_ijepa_arguments

    model = _small_model()
    exported = IJepaTask.export_state_dict(None, model.state_dict())
    assert exported.keys() == model.target_encoder.state_dict().keys()
    parser = argparse.ArgumentParser()
    add_ijepa_arguments(parser)
    for bad in (["0.9", "0.5"], ["0.5", "1.5"]):
        args = parser.parse_args(["--output-dir", "unused", "--ema-momentum", *bad])
        with pytest.raises(ValueError, match="--ema-momentum"):
            IJepaTask.validate_arguments(args)
