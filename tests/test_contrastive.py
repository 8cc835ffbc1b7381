"""MAGE-C: the InfoNCE loss against hand-computed values, its lower bound, the combined loss of `pretrain
--contrastive`, the two-view augmentation, and negatives gathered over 2 processes giving the loss (and gradient)
of one process with the whole batch."""

import math
import os

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModel

from mage_hf import MageConfig, MageForMaskedImageModeling, MageModel
from mage_hf.training.contrastive import info_nce_loss
from mage_hf.training.data import ColorAugment, ImageTransform
from mage_hf.training.loop import StepContext

TEMPERATURE = 0.2


def _unit(*rows) -> torch.Tensor:
    return F.normalize(torch.tensor(rows, dtype=torch.float32), dim=-1)


def _reference_loss(a: torch.Tensor, b: torch.Tensor, temperature: float) -> float:
    """NT-Xent written out anchor by anchor."""
    views = torch.cat([a, b]).double()
    n = a.shape[0]
    total = 0.0
    for i in range(2 * n):
        positive = (i + n) % (2 * n)
        similarities = [float(views[i] @ views[k]) / temperature for k in range(2 * n) if k != i]
        positive_similarity = float(views[i] @ views[positive]) / temperature
        total += -positive_similarity + math.log(sum(math.exp(s) for s in similarities))
    return total / (2 * n)


def test_info_nce_matches_a_hand_computed_case():
    a = _unit([1.0, 0.0], [0.0, 1.0])
    b = _unit([0.6, 0.8], [0.8, -0.6])
    # similarities / T: a0.b0 = 3, a0.a1 = 0, a0.b1 = 4, a1.b0 = 4, a1.b1 = -3, b0.b1 = 0
    by_hand = (
        (-3 + math.log(math.exp(3) + 1 + math.exp(4)))  # a0: positive b0, negatives a1, b1
        + (3 + math.log(math.exp(-3) + 1 + math.exp(4)))  # a1: positive b1, negatives a0, b0
        + (-3 + math.log(math.exp(3) + math.exp(4) + 1))  # b0: positive a0, negatives a1, b1
        + (3 + math.log(math.exp(-3) + math.exp(4) + 1))  # b1: positive a1, negatives a0, b0
    ) / 4
    assert _reference_loss(a, b, TEMPERATURE) == pytest.approx(by_hand, rel=1e-6)  # float32 unit rows
    assert float(info_nce_loss(a, b, TEMPERATURE)) == pytest.approx(by_hand, rel=1e-5)


def test_identical_views_give_the_lower_bound():
    """With s = 1 for every positive the loss is log(1 + sum exp((c - 1) / T)); orthogonal negatives make it
    log(1 + (2G - 2) exp(-1 / T)), and any change of the second view raises it."""
    a = torch.eye(4)
    bound = math.log(1 + 6 * math.exp(-1 / TEMPERATURE))
    assert float(info_nce_loss(a, a.clone(), TEMPERATURE)) == pytest.approx(bound, rel=1e-5)
    generator = torch.Generator().manual_seed(0)
    for _ in range(5):
        b = F.normalize(a + 0.3 * torch.randn(4, 4, generator=generator), dim=-1)
        assert float(info_nce_loss(a, b, TEMPERATURE)) > bound
    with pytest.raises(ValueError, match="embeds_a"):
        info_nce_loss(a, a[:3], TEMPERATURE)
    with pytest.raises(ValueError, match="temperature"):
        info_nce_loss(a, a, 0.0)


def test_two_views_are_independent_augmentations():
    from PIL import Image
    import numpy as np

    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 40, 3), dtype=np.uint8))
    transform = ImageTransform("image", None, 32, train=True, views=2, color_augment=ColorAugment(), seed=3)
    batch = transform({"image": [image], "__mage_example_index__": [7]})
    views = batch["pixel_values"][0]
    assert views.shape == (2, 3, 32, 32) and 0 <= views.min() and views.max() <= 1
    assert not torch.equal(views[0], views[1])
    again = transform({"image": [image], "__mage_example_index__": [7]})["pixel_values"][0]
    assert torch.equal(views, again)  # keyed on (seed, epoch, index, view)
    # view 0 of one view is the plain single-view augmentation's draw, then the colour ops
    plain = ImageTransform("image", None, 32, train=True, seed=3)
    assert plain({"image": [image], "__mage_example_index__": [7]})["pixel_values"][0].shape == (3, 32, 32)
    gray = ColorAugment(jitter_prob=0.0, grayscale_prob=1.0, blur_prob=0.0)(image, torch.Generator().manual_seed(0))
    r, g, b = (np.asarray(gray)[..., i] for i in range(3))
    assert (r == g).all() and (g == b).all()


def _contrastive_config() -> MageConfig:
    return MageConfig.from_preset("tiny", contrastive_projection_dim=16, contrastive_hidden_size=32)


def test_pretrain_step_adds_the_weighted_info_nce_loss():
    from mage_hf.training.pretrain import PretrainingTask

    torch.manual_seed(0)
    model = MageForMaskedImageModeling(_contrastive_config()).eval()  # no dropout: two forwards agree
    task = PretrainingTask.__new__(PretrainingTask)  # the step only needs its arguments
    task.args = type("Args", (), {"contrastive": True})()
    views = torch.rand(3, 2, 3, 32, 32)
    output = task.training_step(model, {"pixel_values": views}, StepContext(torch.Generator().manual_seed(5), 0))
    # the same forward by hand: both views in one batch, view 0 first
    reference = model(pixel_values=views.transpose(0, 1).flatten(0, 1), generator=torch.Generator().manual_seed(5))
    first, second = reference.contrastive_embeds.chunk(2)
    expected = reference.loss + 0.1 * info_nce_loss(first, second, 0.2)
    assert float(output.loss.detach()) == pytest.approx(float(expected.detach()), rel=1e-6)
    assert set(output.logs) == {"token_loss", "contrastive_loss"}
    output.loss.backward()
    assert model.contrastive_head.dense.weight.grad.abs().sum() > 0


def test_contrastive_head_is_saved_and_ignored_by_feature_loading(tmp_path):
    model = MageForMaskedImageModeling(_contrastive_config())
    model.save_pretrained(tmp_path)
    again = MageForMaskedImageModeling.from_pretrained(tmp_path)
    assert torch.equal(again.contrastive_head.projection.weight, model.contrastive_head.projection.weight)
    features, info = AutoModel.from_pretrained(tmp_path, output_loading_info=True)
    assert isinstance(features, MageModel) and info["unexpected_keys"] == set()
    plain = MageForMaskedImageModeling(MageConfig.from_preset("tiny"))
    assert plain.contrastive_head is None and plain(pixel_values=torch.rand(1, 3, 32, 32)).contrastive_embeds is None


# ----------------------------------------------------------------------------- negatives over 2 processes

BATCH, DIM = 3, 8


def _embeddings() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(11)
    raw = torch.randn(2, 2 * BATCH, DIM, generator=generator)
    return raw[0], raw[1]  # unnormalised leaves; the loss sees their normalised rows


def _worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    torch.distributed.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    a, b = _embeddings()
    rows = slice(rank * BATCH, (rank + 1) * BATCH)
    a, b = a[rows].clone().requires_grad_(True), b[rows].clone().requires_grad_(True)
    loss = info_nce_loss(F.normalize(a, dim=-1), F.normalize(b, dim=-1), TEMPERATURE)
    loss.backward()
    torch.save({"loss": loss.detach(), "grad_a": a.grad, "grad_b": b.grad}, os.path.join(out_dir, f"{rank}.pt"))
    torch.distributed.destroy_process_group()


def test_gathered_negatives_equal_one_process_with_the_whole_batch(tmp_path):
    """2 processes x B images: the mean of their losses equals the loss of 1 process with 2B images, and each
    process's gradient (summed over processes by the all_gather backward) equals the whole-batch gradient times 2
    (DDP then averages it back)."""
    import torch.multiprocessing as mp

    mp.spawn(_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    parts = [torch.load(tmp_path / f"{rank}.pt") for rank in range(2)]
    a, b = (t.clone().requires_grad_(True) for t in _embeddings())
    whole = info_nce_loss(F.normalize(a, dim=-1), F.normalize(b, dim=-1), TEMPERATURE)
    whole.backward()
    assert float((parts[0]["loss"] + parts[1]["loss"]) / 2) == pytest.approx(float(whole), rel=1e-6)
    grad_a = torch.cat([part["grad_a"] for part in parts])
    grad_b = torch.cat([part["grad_b"] for part in parts])
    torch.testing.assert_close(grad_a / 2, a.grad, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(grad_b / 2, b.grad, atol=1e-6, rtol=1e-5)
