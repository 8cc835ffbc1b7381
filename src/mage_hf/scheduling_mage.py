"""MAGE's iterative (MaskGIT-style) token decoding as a diffusers scheduler.

The rule follows the original `gen_img_uncond.py` of MAGE (Li et al., CVPR 2023). With N image tokens, mask id M and
T = `num_inference_steps`, step t (0-based) of the decoding loop:

1. samples every token from `Categorical(logits / temperature)` and keeps the already known tokens
   (`sampled = where(sample_ids == M, sampled, sample_ids)`);
2. sets `ratio = (t + 1) / T`, `mask_len = floor(N * mask_ratio(ratio))` (N: all image tokens, the number unknown at
   the start), clamped per sample to `[1, unknown - 1]` (`unknown`: tokens equal to M before this step);
3. ranks the unknown tokens by `log(softmax(logits)[sampled]) + choice_temperature * (1 - ratio) * gumbel`, known
   tokens ranking +inf, and re-masks those with confidence `<=` the `mask_len`-th smallest.

Last step: the original loop returns `sampled` after the loop, not the re-masked tokens of its last step, so here the
last step (t = T - 1) does no re-masking: its `prev_sample` equals `pred_original_sample` and holds no mask id.

Randomness comes from torch generators (the original used numpy's Gumbel sampler), so results are reproducible
with `generator`, and with a list of per-sample generators each sample is independent of the rest of the batch.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from diffusers.utils import BaseOutput

__all__ = ["MASK_SCHEDULES", "MageScheduler", "MageSchedulerOutput", "gumbel_noise", "mask_ratio_at"]

MASK_SCHEDULES = ("cosine", "linear")

GeneratorType = torch.Generator | Sequence[torch.Generator] | None
ScheduleType = str | Callable[[float], float]


def mask_ratio_at(ratio: float | torch.Tensor, schedule: ScheduleType = "cosine") -> float | torch.Tensor:
    """Fraction of tokens still masked once a fraction `ratio` (in [0, 1]) of the decoding is done.

    "cosine": `cos(pi / 2 * ratio)` (MAGE / MaskGIT); "linear": `1 - ratio`; or a callable `ratio -> mask_ratio`.
    A float `ratio` gives a float, a tensor gives a tensor of the same shape (callables get `ratio` as given).
    """
    if callable(schedule):
        return schedule(ratio)
    if schedule == "cosine":
        return torch.cos(ratio * (math.pi / 2)) if torch.is_tensor(ratio) else math.cos(math.pi / 2 * ratio)
    if schedule == "linear":
        return 1 - ratio
    raise ValueError(f"`schedule` must be one of {MASK_SCHEDULES} or a callable, got {schedule!r}")


def gumbel_noise(uniform: torch.Tensor) -> torch.Tensor:
    """Standard Gumbel noise `-log(-log(U))` from uniform samples `U` (any shape; clamped away from 0 and 1)."""
    tiny = torch.finfo(uniform.dtype).tiny
    uniform = uniform.clamp(min=tiny, max=1.0 - torch.finfo(uniform.dtype).eps)
    return -torch.log(-torch.log(uniform))


@dataclass
class MageSchedulerOutput(BaseOutput):
    """Output of [`MageScheduler.step`].

    Args:
        prev_sample (`torch.LongTensor` of shape `(batch_size, num_tokens)`):
            Token ids for the next step: `pred_original_sample` with the least confident new tokens set back to
            `mask_token_id`. On the last step nothing is re-masked and it equals `pred_original_sample`.
        pred_original_sample (`torch.LongTensor` of shape `(batch_size, num_tokens)`):
            All tokens known: the input's known ids, and the ids sampled this step at the masked positions.
    """

    prev_sample: torch.LongTensor
    pred_original_sample: torch.LongTensor


class MageScheduler(SchedulerMixin, ConfigMixin):
    """MAGE's iterative decoding of masked image tokens (MaskGIT rule, see the module docstring).

    Args:
        mask_token_id (`int`): id of the mask token in the transformer's vocabulary.
        mask_schedule (`str`, defaults to `"cosine"`): `"cosine"` or `"linear"` (see [`mask_ratio_at`]).
        choice_temperature (`float`, defaults to 4.5): Gumbel temperature of the re-masking choice, annealed by
            `(1 - ratio)` (MAGE: 4.5; 6.0 for its FID numbers).
        temperature (`float`, defaults to 1.0): sampling temperature of the token distribution.
        mask_schedule_fn (`Callable[[float], float]`, *optional*): a custom `ratio -> mask_ratio` used instead of
            `mask_schedule`. Not saved with the config: after `from_pretrained`, set `scheduler.mask_schedule_fn`.
    """

    order = 1
    ignore_for_config: ClassVar[list[str]] = ["mask_schedule_fn"]

    @register_to_config
    def __init__(
        self,
        mask_token_id: int,
        mask_schedule: str = "cosine",
        choice_temperature: float = 4.5,
        temperature: float = 1.0,
        *,
        mask_schedule_fn: Callable[[float], float] | None = None,
    ):
        if isinstance(mask_token_id, bool) or not isinstance(mask_token_id, int) or mask_token_id < 0:
            raise ValueError(f"`mask_token_id` must be a non-negative int, got {mask_token_id!r}")
        if mask_schedule not in MASK_SCHEDULES:
            raise ValueError(f"`mask_schedule` must be one of {MASK_SCHEDULES}, got {mask_schedule!r}")
        if mask_schedule_fn is not None and not callable(mask_schedule_fn):
            raise ValueError(f"`mask_schedule_fn` must be callable or None, got {mask_schedule_fn!r}")
        _check_temperatures(choice_temperature, temperature)
        self.mask_schedule_fn = mask_schedule_fn
        self.num_inference_steps: int | None = None
        self.timesteps: torch.LongTensor | None = None

    # ------------------------------------------------------------------ schedule
    def mask_ratio(self, ratio: float | torch.Tensor) -> float | torch.Tensor:
        """Mask ratio after a fraction `ratio` of the decoding, with this scheduler's schedule ([`mask_ratio_at`])."""
        return mask_ratio_at(ratio, self.mask_schedule_fn or self.config.mask_schedule)

    def mask_len(self, step_index: int, num_tokens: int) -> int:
        """Unclamped number of tokens left masked after step `step_index`: `floor(num_tokens * mask_ratio)`."""
        ratio = (step_index + 1) / self._require_steps()
        return max(0, math.floor(num_tokens * float(self.mask_ratio(ratio))))

    def set_timesteps(self, num_inference_steps: int, device: str | torch.device | None = None) -> None:
        """Set the number of decoding steps T; `self.timesteps` becomes the step indices `0..T-1` (LongTensor)."""
        if (
            isinstance(num_inference_steps, bool)
            or not isinstance(num_inference_steps, int)
            or num_inference_steps < 1
        ):
            raise ValueError(f"`num_inference_steps` must be an int >= 1, got {num_inference_steps!r}")
        self.num_inference_steps = num_inference_steps
        self.timesteps = torch.arange(num_inference_steps, dtype=torch.long, device=device)

    def _require_steps(self) -> int:
        if self.num_inference_steps is None:
            raise ValueError(
                "`num_inference_steps` is not set: call `set_timesteps(num_inference_steps)` first"
            )
        return self.num_inference_steps

    # ------------------------------------------------------------------ decoding
    def step(
        self,
        logits: torch.Tensor,
        step_index: int | torch.Tensor,
        sample_ids: torch.LongTensor,
        generator: GeneratorType = None,
        choice_temperature: float | None = None,
        temperature: float | None = None,
        return_dict: bool = True,
        num_masked_at_start: torch.LongTensor | None = None,
    ) -> MageSchedulerOutput | tuple[torch.LongTensor, torch.LongTensor]:
        """One decoding step.

        Args:
            logits (`torch.Tensor` of shape `(batch_size, num_tokens, codebook_size)`): the transformer's logits
                over the codebook (already sliced to the codebook columns).
            step_index (`int`): 0-based step index, `0 <= step_index < num_inference_steps`.
            sample_ids (`torch.LongTensor` of shape `(batch_size, num_tokens)`): current ids, `mask_token_id`
                where unknown.
            generator: `None`, a `torch.Generator`, or a list of `batch_size` generators (sample b draws its token
                sample, then its Gumbel noise, from `generator[b]`; a batch of one with `[g]` equals one with `g`).
            choice_temperature, temperature: override the config values for this step.
            return_dict: return a [`MageSchedulerOutput`] (else the tuple `(prev_sample, pred_original_sample)`).
            num_masked_at_start (`torch.LongTensor` of shape `(batch_size,)`, *optional*): tokens that were unknown
                before step 0 (editing); the schedule scales this count instead of `num_tokens` (the original's
                rule, all tokens unknown at the start).

        Returns:
            `prev_sample` (ids for the next step, re-masked; no mask id after the last step) and
            `pred_original_sample` (all ids known), both `(batch_size, num_tokens)` long.
        """
        num_steps = self._require_steps()
        if torch.is_tensor(step_index):
            if step_index.numel() != 1:
                raise ValueError(
                    f"`step_index` must be a single step, got a tensor of shape {tuple(step_index.shape)}"
                )
            step_index = int(step_index.item())
        if isinstance(step_index, bool) or not isinstance(step_index, int) or not 0 <= step_index < num_steps:
            raise ValueError(f"`step_index` must be an int in [0, {num_steps}), got {step_index!r}")
        if logits.ndim != 3:
            raise ValueError(
                f"`logits` must be (batch_size, num_tokens, codebook_size), got {tuple(logits.shape)}"
            )
        if sample_ids.ndim != 2 or tuple(sample_ids.shape) != tuple(logits.shape[:2]):
            raise ValueError(
                f"`sample_ids` shape {tuple(sample_ids.shape)} does not match `logits` shape {tuple(logits.shape)}"
            )
        if sample_ids.dtype.is_floating_point or sample_ids.dtype == torch.bool:
            raise ValueError(f"`sample_ids` must be an integer tensor, got {sample_ids.dtype}")
        batch_size, num_tokens, _ = logits.shape
        generators = _check_generator(generator, batch_size)
        choice_temperature = (
            self.config.choice_temperature if choice_temperature is None else choice_temperature
        )
        temperature = self.config.temperature if temperature is None else temperature
        _check_temperatures(choice_temperature, temperature)

        device = logits.device
        mask_id = self.config.mask_token_id
        sample_ids = sample_ids.to(device=device, dtype=torch.long)
        unknown = sample_ids == mask_id
        logits = logits.float()

        # 1-2. sample every token, keep the known ones; draw the Gumbel uniforms from the same generator.
        sampling_probs = torch.softmax(logits / temperature, dim=-1)
        sampled, uniform = _draw(sampling_probs, generators, generator)
        sampled = torch.where(unknown, sampled, sample_ids)

        if step_index == num_steps - 1:
            # Last step: the original returns `sampled`, so nothing is re-masked.
            prev_sample = sampled
        else:
            # 3. how many stay masked, per sample.
            ratio = (step_index + 1) / num_steps
            unknown_count = unknown.sum(dim=-1)
            if num_masked_at_start is None:
                mask_len = torch.full_like(unknown_count, self.mask_len(step_index, num_tokens))
            else:
                ratio_left = float(self.mask_ratio(ratio))
                mask_len = torch.floor(num_masked_at_start.to(device).double() * ratio_left).long().clamp_min(0)
            mask_len = torch.clamp(torch.minimum(unknown_count - 1, mask_len), min=1)

            # 4. re-mask the least confident new tokens.
            probs = torch.softmax(logits, dim=-1)
            selected = torch.gather(probs, -1, sampled[..., None]).squeeze(-1)
            confidence = torch.log(selected) + choice_temperature * (1.0 - ratio) * gumbel_noise(uniform)
            confidence = torch.where(unknown, confidence, torch.full_like(confidence, math.inf))
            sorted_confidence = torch.sort(confidence, dim=-1).values
            cut_off = torch.gather(sorted_confidence, -1, (mask_len - 1)[:, None])
            # `& unknown`: a sample with no unknown token (cut-off +inf) must not re-mask its known tokens.
            masking = (confidence <= cut_off) & unknown
            prev_sample = torch.where(masking, torch.full_like(sampled, mask_id), sampled)

        if not return_dict:
            return prev_sample, sampled
        return MageSchedulerOutput(prev_sample=prev_sample, pred_original_sample=sampled)

    # ------------------------------------------------------------------ training / editing
    def add_noise(
        self,
        sample_ids: torch.LongTensor,
        mask_ratio: float | torch.Tensor,
        generator: GeneratorType = None,
    ) -> tuple[torch.LongTensor, torch.BoolTensor]:
        """Mask `ceil(num_tokens * mask_ratio)` random tokens per sample (at least 1, at most all).

        Args:
            sample_ids (`torch.LongTensor` of shape `(batch_size, num_tokens)`): token ids.
            mask_ratio (`float` or `torch.Tensor` of shape `(batch_size,)`): fraction to mask, in [0, 1]; per sample
                when a tensor.
            generator: `None`, a `torch.Generator`, or a list of `batch_size` generators (one uniform per token).

        Returns:
            `(masked_ids, mask)`: `masked_ids` (long) with `mask_token_id` where `mask` (bool) is True, both
            `(batch_size, num_tokens)`.
        """
        if sample_ids.ndim != 2:
            raise ValueError(f"`sample_ids` must be (batch_size, num_tokens), got {tuple(sample_ids.shape)}")
        batch_size, num_tokens = sample_ids.shape
        device = sample_ids.device
        ratios = torch.as_tensor(mask_ratio, dtype=torch.float64, device=device).flatten()
        if ratios.numel() == 1:
            ratios = ratios.expand(batch_size)
        if ratios.numel() != batch_size or bool(((ratios < 0) | (ratios > 1)).any()):
            raise ValueError(f"`mask_ratio` must be in [0, 1], a float or one per sample, got {mask_ratio!r}")
        generators = _check_generator(generator, batch_size)
        if generators is not None:
            noise = torch.stack(
                [torch.rand(num_tokens, generator=g, device=g.device).to(device) for g in generators]
            )
        else:
            gen_device = generator.device if generator is not None else device
            noise = torch.rand(batch_size, num_tokens, generator=generator, device=gen_device).to(device)
        num_masked = torch.ceil(num_tokens * ratios).long().clamp(1, num_tokens)
        cut_off = torch.gather(torch.sort(noise, dim=-1).values, -1, (num_masked - 1)[:, None])
        mask = noise <= cut_off
        masked = torch.where(mask, torch.full_like(sample_ids, self.config.mask_token_id), sample_ids)
        return masked, mask


def _check_temperatures(choice_temperature: float, temperature: float) -> None:
    if (
        not isinstance(choice_temperature, (int, float))
        or isinstance(choice_temperature, bool)
        or choice_temperature < 0
    ):
        raise ValueError(f"`choice_temperature` must be a number >= 0, got {choice_temperature!r}")
    if not isinstance(temperature, (int, float)) or isinstance(temperature, bool) or not temperature > 0:
        raise ValueError(f"`temperature` must be a number > 0, got {temperature!r}")


def _check_generator(generator: GeneratorType, batch_size: int) -> list[torch.Generator] | None:
    """The list of per-sample generators, or None when `generator` is None or a single generator."""
    if generator is None or isinstance(generator, torch.Generator):
        return None
    if isinstance(generator, (list, tuple)):
        if len(generator) != batch_size:
            raise ValueError(
                f"`generator` is a list of {len(generator)} generators for a batch of {batch_size}"
            )
        if not all(isinstance(g, torch.Generator) for g in generator):
            raise ValueError("`generator` list must hold only torch.Generator objects")
        return list(generator)
    raise ValueError(
        f"`generator` must be None, a torch.Generator or a list of them, got {type(generator).__name__}"
    )


def _draw_one(probs: torch.Tensor, generator: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor]:
    """(..., K) probs -> (...) categorical ids, then (...) U(0, 1), both drawn from `generator` on its device."""
    device = probs.device
    gen_device = generator.device if generator is not None else device
    flat = probs.reshape(-1, probs.shape[-1]).to(gen_device)
    ids = torch.multinomial(flat, 1, generator=generator).view(probs.shape[:-1]).to(device)
    uniform = torch.rand(probs.shape[:-1], generator=generator, device=gen_device).to(device)
    return ids, uniform


def _draw(
    probs: torch.Tensor, generators: list[torch.Generator] | None, generator: GeneratorType
) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, N, K) probs -> (B, N) sampled ids and (B, N) uniforms; per sample when `generators` is a list."""
    if generators is None:
        return _draw_one(probs, generator)
    pairs = [_draw_one(probs[b], g) for b, g in enumerate(generators)]
    return torch.stack([p[0] for p in pairs]), torch.stack([p[1] for p in pairs])
