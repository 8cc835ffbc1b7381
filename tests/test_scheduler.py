"""MageScheduler: MAGE's MaskGIT decoding rule, checked against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch

from mage_hf.masking import mask_ratio_at
from mage_hf.scheduling_mage import MageScheduler, MageSchedulerOutput

MASK = 1024
K = 16  # codebook size of the toy logits

# floor(64 * cos(pi/2 * r)) for r = 1/4, 2/4, 3/4, 4/4: 64 * 0.92388 = 59.13, 64 * 0.70711 = 45.25,
# 64 * 0.38268 = 24.49, 64 * cos(pi/2) ~ 4e-15.
COSINE_T4_N64 = [59, 45, 24, 0]
# floor(64 * (1 - r)): 48, 32, 16, 0.
LINEAR_T4_N64 = [48, 32, 16, 0]


def make(schedule: str = "cosine", **kwargs) -> MageScheduler:
    return MageScheduler(mask_token_id=MASK, mask_schedule=schedule, **kwargs)


def graded_logits(strengths: list[float], codebook_size: int = K) -> torch.Tensor:
    """(1, N, K) logits: token i puts `strengths[i]` on id i % K and 0 elsewhere.

    With a tiny sampling temperature token i samples id i % K, and its confidence
    softmax(logits)[i % K] = e^a / (e^a + K - 1) grows with a = strengths[i].
    """
    n = len(strengths)
    logits = torch.zeros(1, n, codebook_size)
    logits[0, torch.arange(n), torch.arange(n) % codebook_size] = torch.tensor(strengths)
    return logits


def num_unknown(ids: torch.Tensor) -> list[int]:
    return (ids == MASK).sum(dim=-1).tolist()


# ----------------------------------------------------------------------------- schedule


def test_mask_ratio_at_values():
    assert mask_ratio_at(0.0) == pytest.approx(1.0)
    assert mask_ratio_at(0.5) == pytest.approx(math.sqrt(0.5))
    assert mask_ratio_at(1.0) == pytest.approx(0.0, abs=1e-12)
    assert mask_ratio_at(0.25, "linear") == pytest.approx(0.75)
    assert mask_ratio_at(0.3, lambda r: 0.5 * r) == pytest.approx(0.15)
    tensor = mask_ratio_at(torch.tensor([0.0, 0.5]), "cosine")
    assert torch.allclose(tensor, torch.tensor([1.0, math.sqrt(0.5)]))
    with pytest.raises(ValueError, match="schedule"):
        mask_ratio_at(0.5, "square")


@pytest.mark.parametrize(("schedule", "expected"), [("cosine", COSINE_T4_N64), ("linear", LINEAR_T4_N64)])
def test_mask_len_sequence(schedule, expected):
    scheduler = make(schedule)
    scheduler.set_timesteps(4)
    assert [scheduler.mask_len(t, 64) for t in range(4)] == expected
    assert scheduler.mask_ratio(0.5) == pytest.approx(math.sqrt(0.5) if schedule == "cosine" else 0.5)


def test_set_timesteps():
    scheduler = make()
    scheduler.set_timesteps(5)
    assert scheduler.num_inference_steps == 5
    assert scheduler.timesteps.dtype == torch.long
    assert scheduler.timesteps.tolist() == [4, 3, 2, 1, 0]  # descending, as in diffusers and aMUSEd
    assert [scheduler.step_index(t) for t in scheduler.timesteps] == [0, 1, 2, 3, 4]


# ----------------------------------------------------------------------------- one step


@pytest.mark.parametrize(("schedule", "expected"), [("cosine", COSINE_T4_N64), ("linear", LINEAR_T4_N64)])
def test_first_step_unknown_count(schedule, expected):
    scheduler = make(schedule)
    scheduler.set_timesteps(4)
    logits = torch.randn(2, 64, K, generator=torch.Generator().manual_seed(0))
    start = torch.full((2, 64), MASK)
    out = scheduler.step(logits, 3, start, generator=torch.Generator().manual_seed(1))
    assert isinstance(out, MageSchedulerOutput)
    assert num_unknown(out.prev_sample) == [expected[0]] * 2
    assert num_unknown(out.pred_original_sample) == [0, 0]


def test_no_noise_remasks_lowest_confidence():
    scheduler = make(choice_temperature=0.0, sampling_temperature=1e-4)
    scheduler.set_timesteps(2)
    strengths = [3.0, 0.5, 7.0, 1.0, 6.0, 2.0, 8.0, 4.0]  # lowest five: indices 1, 3, 5, 0, 7
    logits = graded_logits(strengths)
    start = torch.full((1, 8), MASK)
    out = scheduler.step(logits, 1, start)  # the first of 2 steps
    # mask_len = floor(8 * cos(pi/4)) = floor(5.66) = 5 (<= 8 unknown - 1)
    assert out.pred_original_sample.tolist() == [list(range(8))]
    masked = (out.prev_sample[0] == MASK).nonzero().flatten().tolist()
    assert masked == [0, 1, 3, 5, 7]
    kept = [i for i in range(8) if i not in masked]
    assert out.prev_sample[0, kept].tolist() == kept


def test_known_tokens_kept_and_never_remasked():
    scheduler = make(choice_temperature=0.0, sampling_temperature=1e-4)
    scheduler.set_timesteps(3)
    # The known tokens get the *lowest* logits, and their logits point at other ids: still untouched.
    strengths = [0.1, 0.2, 0.3, 5.0, 1.0, 4.0, 2.0, 3.0, 6.0, 7.0]
    logits = graded_logits(strengths)
    start = torch.full((1, 10), MASK)
    start[0, :3] = torch.tensor([11, 12, 13])
    out = scheduler.step(logits, 2, start)  # the first of 3 steps
    # mask_len = floor(10 * cos(pi/6)) = floor(8.66) = 8, clamped to 7 unknown - 1 = 6
    assert out.prev_sample[0, :3].tolist() == [11, 12, 13]
    assert out.pred_original_sample[0, :3].tolist() == [11, 12, 13]
    masked = (out.prev_sample[0] == MASK).nonzero().flatten().tolist()
    assert masked == [3, 4, 5, 6, 7, 8]  # all unknown but the most confident one (index 9, strength 7)
    assert out.prev_sample[0, 9].item() == 9


def test_clamp_to_unknown_minus_one_and_at_least_one():
    scheduler = make()
    scheduler.set_timesteps(4)
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(4, 64, K, generator=generator)
    start = torch.randint(0, K, (4, 64), generator=generator)
    start[0, :] = MASK  # 64 unknown: floor formula, 59
    start[1, :3] = MASK  # 3 unknown: min(2, 59) = 2
    start[2, :1] = MASK  # 1 unknown: max(1, min(0, 59)) = 1, re-masked
    # sample 3: nothing unknown: nothing to re-mask, nothing changes
    out = scheduler.step(logits, 3, start, generator=generator)
    assert num_unknown(out.prev_sample) == [59, 2, 1, 0]
    assert torch.equal(out.prev_sample[3], start[3])
    assert out.prev_sample[2, 0] == MASK

    # a schedule that asks for 0 masked before the last step still leaves 1 masked
    zero = make(mask_schedule_fn=lambda r: 0.0)
    zero.set_timesteps(4)
    out = zero.step(logits[:1], 3, torch.full((1, 64), MASK), generator=generator)
    assert num_unknown(out.prev_sample) == [1]


def test_last_step_no_remasking():
    scheduler = make()
    scheduler.set_timesteps(4)
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 64, K, generator=generator)
    start = torch.full((2, 64), MASK)
    start[0, 30:] = 5  # 30 still unknown going into the last step
    out = scheduler.step(logits, 0, start, generator=generator)  # timestep 0: the last step
    assert not (out.prev_sample == MASK).any()
    assert torch.equal(out.prev_sample, out.pred_original_sample)
    assert (out.prev_sample[0, 30:] == 5).all()
    prev, pred = scheduler.step(logits, 0, start, return_dict=False)
    assert torch.equal(prev, pred) and not (pred == MASK).any()


# ----------------------------------------------------------------------------- randomness


def test_same_generator_same_result():
    scheduler = make()
    scheduler.set_timesteps(4)
    logits = torch.randn(3, 64, K, generator=torch.Generator().manual_seed(0))
    start = torch.full((3, 64), MASK)
    a = scheduler.step(logits, 1, start, generator=torch.Generator().manual_seed(7))
    b = scheduler.step(logits, 1, start, generator=torch.Generator().manual_seed(7))
    c = scheduler.step(logits, 1, start, generator=torch.Generator().manual_seed(8))
    assert torch.equal(a.prev_sample, b.prev_sample)
    assert torch.equal(a.pred_original_sample, b.pred_original_sample)
    assert not torch.equal(a.pred_original_sample, c.pred_original_sample)


def test_generator_list_per_sample():
    scheduler = make()
    scheduler.set_timesteps(4)
    logits = torch.randn(2, 64, K, generator=torch.Generator().manual_seed(0))
    start = torch.full((2, 64), MASK)
    batch = scheduler.step(
        logits, 3, start, generator=[torch.Generator().manual_seed(10), torch.Generator().manual_seed(11)]
    )
    alone_list = scheduler.step(logits[:1], 3, start[:1], generator=[torch.Generator().manual_seed(10)])
    alone_single = scheduler.step(logits[:1], 3, start[:1], generator=torch.Generator().manual_seed(10))
    for alone in (alone_list, alone_single):
        assert torch.equal(batch.prev_sample[:1], alone.prev_sample)
        assert torch.equal(batch.pred_original_sample[:1], alone.pred_original_sample)
    # sample 1 does not depend on sample 0's logits
    other = logits.clone()
    other[0] = torch.randn(64, K)
    batch2 = scheduler.step(
        other, 3, start, generator=[torch.Generator().manual_seed(10), torch.Generator().manual_seed(11)]
    )
    assert torch.equal(batch.prev_sample[1], batch2.prev_sample[1])


# ----------------------------------------------------------------------------- full loop


@pytest.mark.parametrize(("schedule", "expected"), [("cosine", COSINE_T4_N64), ("linear", LINEAR_T4_N64)])
def test_full_decode_loop(schedule, expected):
    scheduler = make(schedule)
    scheduler.set_timesteps(4)
    generator = torch.Generator().manual_seed(0)
    ids = torch.full((3, 64), MASK)
    counts = []
    for t in scheduler.timesteps:
        logits = torch.randn(3, 64, K, generator=generator)
        known_before = ids != MASK
        out = scheduler.step(logits, t, ids, generator=generator)
        assert torch.equal(out.prev_sample[known_before], ids[known_before])  # known tokens never change
        assert not (out.pred_original_sample == MASK).any()
        ids = out.prev_sample
        counts.append(num_unknown(ids))
    assert counts == [[n] * 3 for n in expected]
    assert not (ids == MASK).any()
    assert ((ids >= 0) & (ids < K)).all()


# ----------------------------------------------------------------------------- add_noise


def test_add_noise_masks_what_the_schedule_leaves_unknown():
    scheduler = make()
    scheduler.set_timesteps(4)
    ids = torch.randint(0, K, (4, 64), generator=torch.Generator().manual_seed(0))
    # the first step (timestep 3) starts fully masked
    assert (scheduler.add_noise(ids, 3) == MASK).all()
    # the third step (index 2) starts with ceil(64 * cos(pi/2 * 2/4)) = ceil(45.25) = 46 masked
    masked = scheduler.add_noise(ids, 1, generator=torch.Generator().manual_seed(1))
    assert num_unknown(masked) == [46] * 4
    assert torch.equal(masked[masked != MASK], ids[masked != MASK])
    # a region: only its tokens, ceil(16 * 0.7071) = 12 of 16; an empty region changes nothing
    region = torch.zeros(4, 64, dtype=torch.bool)
    region[:3, :16] = True
    masked = scheduler.add_noise(ids, 1, generator=torch.Generator().manual_seed(2), region=region)
    assert num_unknown(masked) == [12, 12, 12, 0]
    assert torch.equal(masked[:, 16:], ids[:, 16:]) and torch.equal(masked[3], ids[3])
    # per-sample generators: row 0 depends on its own generator only
    a = scheduler.add_noise(ids, 1, generator=torch.Generator().manual_seed(3))
    b = scheduler.add_noise(ids, 1, generator=[torch.Generator().manual_seed(3)] + [torch.Generator()] * 3)
    assert torch.equal(a[0], b[0])


# ----------------------------------------------------------------------------- config


def test_config_round_trip(tmp_path):
    scheduler = MageScheduler(
        mask_token_id=2025, mask_schedule="linear", choice_temperature=6.0, sampling_temperature=0.9
    )
    scheduler.save_pretrained(tmp_path)
    loaded = MageScheduler.from_pretrained(tmp_path)
    assert loaded.config.mask_token_id == 2025
    assert loaded.config.mask_schedule == "linear"
    assert loaded.config.choice_temperature == 6.0
    assert loaded.config.sampling_temperature == 0.9
    assert MageScheduler.order == 1
    again = MageScheduler.from_config(loaded.config)
    assert again.config.mask_token_id == 2025


# ----------------------------------------------------------------------------- errors


def test_bad_inputs():
    scheduler = make()
    logits = torch.randn(2, 8, K)
    ids = torch.full((2, 8), MASK)
    with pytest.raises(ValueError, match="num_inference_steps"):
        scheduler.step(logits, 0, ids)
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="num_inference_steps"):
            scheduler.set_timesteps(bad)
    scheduler.set_timesteps(4)
    for bad in (4, -1):
        with pytest.raises(ValueError, match="timestep"):
            scheduler.step(logits, bad, ids)
    with pytest.raises(ValueError, match="sample"):
        scheduler.step(logits, 3, ids[:, :7])
    with pytest.raises(ValueError, match="sample"):
        scheduler.step(logits, 3, ids[:1])
    with pytest.raises(ValueError, match="model_output"):
        scheduler.step(logits[0], 3, ids)
    with pytest.raises(ValueError, match="generator"):
        scheduler.step(logits, 3, ids, generator=[torch.Generator()])
    with pytest.raises(ValueError, match="sampling_temperature"):
        scheduler.step(logits, 3, ids, sampling_temperature=0.0)
    with pytest.raises(ValueError, match="choice_temperature"):
        scheduler.step(logits, 3, ids, choice_temperature=-1.0)
    with pytest.raises(ValueError, match="region"):
        scheduler.add_noise(ids, 3, region=torch.ones(2, 7, dtype=torch.bool))
    with pytest.raises(ValueError, match="mask_schedule"):
        MageScheduler(mask_token_id=MASK, mask_schedule="square")
    with pytest.raises(ValueError, match="mask_token_id"):
        MageScheduler(mask_token_id=-1)


def test_schedule_spans_the_tokens_masked_at_start():
    """Editing: with 16 of 64 tokens unknown, the cosine schedule runs over those 16 (floor(16 cos(pi t / 8)))."""
    scheduler = MageScheduler(mask_token_id=99, choice_temperature=0.0)
    scheduler.set_timesteps(4)
    ids = torch.zeros(1, 64, dtype=torch.long)
    ids[0, :16] = 99
    start = torch.tensor([16])
    expected = [math.floor(16 * math.cos(math.pi / 2 * (t + 1) / 4)) for t in range(3)] + [0]
    counts = []
    for t in range(4):
        logits = torch.randn(1, 64, 8, generator=torch.Generator().manual_seed(t))
        ids = scheduler.step(logits, scheduler.timesteps[t], ids, num_masked_at_start=start).prev_sample
        counts.append(int((ids == 99).sum()))
        assert (ids[0, 16:] == 0).all()
    assert counts == [max(1, c) if i < 3 else 0 for i, c in enumerate(expected)]
