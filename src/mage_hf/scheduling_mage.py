"""MAGE's iterative (MaskGIT-style) token decoding as a diffusers scheduler.

The rule follows the original `gen_img_uncond.py` of MAGE (Li et al., CVPR 2023). With N image tokens, mask id M and
T = `num_inference_steps`, step t (0-based; its diffusers `timestep` is T - 1 - t, so timesteps descend as in every
diffusers scheduler and in aMUSEd's) of the decoding loop:

1. samples every token from `Categorical(logits / sampling_temperature)` (the original: temperature 1) and keeps the
   already known tokens (`sampled = where(sample == M, sampled, sample)`);
2. sets `ratio = (t + 1) / T`, `mask_len = floor(N * mask_ratio(ratio))` (N: all image tokens, the number unknown at
   the start), clamped per sample to `[1, unknown - 1]` (`unknown`: tokens equal to M before this step);
3. ranks the unknown tokens by `log(softmax(logits)[sampled]) + choice_temperature * (1 - ratio) * gumbel`, known
   tokens ranking +inf, and re-masks those with confidence `<=` the `mask_len`-th smallest.

Last step: the original loop returns `sampled` after the loop, not the re-masked tokens of its last step, so here the
last step (t = T - 1, timestep 0) does no re-masking: its `prev_sample` equals `pred_original_sample`.

Randomness comes from torch generators (the original used numpy's Gumbel sampler), so results are reproducible
with `generator`, and with a list of per-sample generators each sample is independent of the rest of the batch.

Against diffusers' `AmusedScheduler` (the other MaskGIT scheduler): the same cosine / linear schedules and descending
timesteps. aMUSEd's `temperature=(t0, t1)` is the Gumbel temperature of the re-masking choice, interpolated linearly
over the steps; MAGE's `choice_temperature` c is annealed by `(1 - ratio)`, which is aMUSEd's `(c * (T - 1) / T, 0)`.
This scheduler also has a `sampling_temperature` for the token distribution (aMUSEd and the original MAGE sample at
1), and re-masks with `<=` the cut-off (aMUSEd: `<`), as the original does.
"""

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from diffusers.utils import BaseOutput

from .input_checks import check_id_range
from .masking import (
    MASK_SCHEDULES,
    GeneratorType,
    check_generators,
    gumbel_noise,
    mask_lowest,
    mask_ratio_at,
    rand_tensor,
)

__all__ = ["MageScheduler", "MageSchedulerOutput"]


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
        mask_schedule (`str`, defaults to `"cosine"`): `"cosine"` or `"linear"` (see `mage_hf.masking.mask_ratio_at`).
        choice_temperature (`float`, defaults to 4.5): Gumbel temperature of the re-masking choice, annealed by
            `(1 - ratio)` (MAGE: 4.5; 6.0 for its FID numbers).
        sampling_temperature (`float`, defaults to 1.0): temperature of the token distribution that is sampled.
        mask_schedule_fn (`Callable[[float], float]`, *optional*): a custom `ratio -> mask_ratio` used instead of
            `mask_schedule`. Not saved with the config: after `from_pretrained`, set `scheduler.mask_schedule_fn`.

    Example:
    ```python
    >>> scheduler = MageScheduler(mask_token_id=2024)
    >>> scheduler.set_timesteps(4)
    >>> scheduler.timesteps.tolist()
    [3, 2, 1, 0]
    ```
    """

    order = 1
    ignore_for_config: ClassVar[list[str]] = ["mask_schedule_fn"]

    @register_to_config
    def __init__(
        self,
        mask_token_id: int,
        mask_schedule: str = "cosine",
        choice_temperature: float = 4.5,
        sampling_temperature: float = 1.0,
        *,
        mask_schedule_fn: Callable[[float], float] | None = None,
    ):
        if isinstance(mask_token_id, bool) or not isinstance(mask_token_id, int) or mask_token_id < 0:
            raise ValueError(f"`mask_token_id` must be a non-negative int, got {mask_token_id!r}")
        if mask_schedule not in MASK_SCHEDULES:
            raise ValueError(f"`mask_schedule` must be one of {MASK_SCHEDULES}, got {mask_schedule!r}")
        if mask_schedule_fn is not None and not callable(mask_schedule_fn):
            raise ValueError(f"`mask_schedule_fn` must be callable or None, got {mask_schedule_fn!r}")
        _check_temperatures(choice_temperature, sampling_temperature)
        self.mask_schedule_fn = mask_schedule_fn
        self.num_inference_steps: int | None = None
        self.timesteps: torch.LongTensor | None = None

    # ------------------------------------------------------------------ schedule
    def mask_ratio(self, ratio: float | torch.Tensor) -> float | torch.Tensor:
        """Mask ratio after a fraction `ratio` of the decoding, with this scheduler's schedule (`mask_ratio_at`)."""
        return mask_ratio_at(ratio, self.mask_schedule_fn or self.config.mask_schedule)

    def mask_len(self, step_index: int, num_tokens: int) -> int:
        """Unclamped number of tokens left masked after step `step_index`: `floor(num_tokens * mask_ratio)`."""
        ratio = (step_index + 1) / self._require_steps()
        return max(0, math.floor(num_tokens * float(self.mask_ratio(ratio))))

    def set_timesteps(self, num_inference_steps: int, device: str | torch.device | None = None) -> None:
        """Set the number of decoding steps T; `self.timesteps` becomes `T - 1, ..., 1, 0` (LongTensor)."""
        if (
            isinstance(num_inference_steps, bool)
            or not isinstance(num_inference_steps, int)
            or num_inference_steps < 1
        ):
            raise ValueError(f"`num_inference_steps` must be an int >= 1, got {num_inference_steps!r}")
        self.num_inference_steps = num_inference_steps
        self.timesteps = torch.arange(num_inference_steps, dtype=torch.long, device=device).flip(0)

    def step_index(self, timestep: int | torch.Tensor) -> int | torch.Tensor:
        """0-based position in the decoding of `timestep` (a value of `self.timesteps`): `T - 1 - timestep`.

        An int gives an int (range-checked); a 0-d tensor gives a 0-d tensor, without reading it back to the host
        (its range is checked in eager mode only)."""
        num_steps = self._require_steps()
        if torch.is_tensor(timestep):
            if timestep.numel() != 1:
                raise ValueError(f"`timestep` must be a single step, got a tensor of shape {tuple(timestep.shape)}")
            check_id_range("timestep", timestep, 0, num_steps, "num_inference_steps")
            return num_steps - 1 - timestep.reshape(())
        if isinstance(timestep, bool) or not isinstance(timestep, int) or not 0 <= timestep < num_steps:
            raise ValueError(f"`timestep` must be an int in [0, {num_steps}) (see `timesteps`), got {timestep!r}")
        return num_steps - 1 - timestep

    def _require_steps(self) -> int:
        if self.num_inference_steps is None:
            raise ValueError("`num_inference_steps` is not set: call `set_timesteps(num_inference_steps)` first")
        return self.num_inference_steps

    # ------------------------------------------------------------------ decoding
    def step(
        self,
        model_output: torch.Tensor,
        timestep: int | torch.Tensor,
        sample: torch.LongTensor,
        generator: GeneratorType = None,
        choice_temperature: float | None = None,
        sampling_temperature: float | None = None,
        num_masked_at_start: torch.LongTensor | None = None,
        return_dict: bool = True,
    ) -> MageSchedulerOutput | tuple[torch.LongTensor, torch.LongTensor]:
        """One decoding step.

        Args:
            model_output (`torch.Tensor` of shape `(batch_size, num_tokens, codebook_size)`): the transformer's
                logits over the codebook (already sliced to the codebook columns).
            timestep (`int` or 0-d tensor): a value of `self.timesteps` (T - 1 at the first step, 0 at the last).
            sample (`torch.LongTensor` of shape `(batch_size, num_tokens)`): current ids, `mask_token_id` where
                unknown.
            generator: `None`, a `torch.Generator`, or a list of `batch_size` generators (sample b draws its
                `(num_tokens, 2)` uniforms from `generator[b]`; a batch of one with `[g]` equals one with `g`).
            choice_temperature, sampling_temperature: override the config values for this step.
            num_masked_at_start (`torch.LongTensor` of shape `(batch_size,)`, *optional*): tokens that were unknown
                before the first step (editing); the schedule scales this count instead of `num_tokens` (the
                original's rule, all tokens unknown at the start).
            return_dict: return a [`MageSchedulerOutput`] (else the tuple `(prev_sample, pred_original_sample)`).

        Returns:
            `prev_sample` (ids for the next step, re-masked; no mask id after the last step) and
            `pred_original_sample` (all ids known), both `(batch_size, num_tokens)` long.

        The randomness is drawn here ([`draw_noise`]); the rest is [`step_with_noise`], a pure tensor function.
        """
        if model_output.ndim != 3:
            raise ValueError(
                f"`model_output` must be (batch_size, num_tokens, codebook_size), got {tuple(model_output.shape)}"
            )
        step_index = self.step_index(timestep)
        noise = self.draw_noise(tuple(model_output.shape[:2]), generator, model_output.device)
        prev_sample, sampled = self.step_with_noise(
            model_output, step_index, sample, noise, choice_temperature, sampling_temperature, num_masked_at_start
        )
        if not return_dict:
            return prev_sample, sampled
        return MageSchedulerOutput(prev_sample=prev_sample, pred_original_sample=sampled)

    @staticmethod
    def draw_noise(shape: tuple[int, int], generator: GeneratorType, device: torch.device | str) -> torch.Tensor:
        """(B, N, 2) U(0, 1): per token, the uniform of its categorical sample and the one of its Gumbel noise
        (per sample from `generator[b]` when a list is given)."""
        check_generators(generator, shape[0])
        return rand_tensor((*shape, 2), generator, device)

    def step_with_noise(
        self,
        model_output: torch.Tensor,
        step_index: int | torch.Tensor,
        sample: torch.LongTensor,
        noise: torch.Tensor,
        choice_temperature: float | None = None,
        sampling_temperature: float | None = None,
        num_masked_at_start: torch.LongTensor | None = None,
    ) -> tuple[torch.LongTensor, torch.LongTensor]:
        """The step given its uniforms `noise` (B, N, 2) and 0-based `step_index` (an int or a 0-d tensor):
        `(prev_sample, pred_original_sample)`. Tensor operations only, with no read-back to the host, so it runs
        under `torch.compile(fullgraph=True)` and in CUDA graphs (one graph for every step when `step_index` is a
        tensor). The token sample is the inverse CDF of `softmax(logits / sampling_temperature)` at `noise[..., 0]`;
        the Gumbel noise of the re-masking choice is `-log(-log(noise[..., 1]))`."""
        num_steps = self._require_steps()
        logits = model_output
        if sample.ndim != 2 or tuple(sample.shape) != tuple(logits.shape[:2]):
            raise ValueError(
                f"`sample` shape {tuple(sample.shape)} does not match `model_output` shape {tuple(logits.shape)}"
            )
        if sample.dtype.is_floating_point or sample.dtype == torch.bool:
            raise ValueError(f"`sample` must be an integer tensor, got {sample.dtype}")
        if tuple(noise.shape) != (*sample.shape, 2):
            raise ValueError(f"`noise` must have shape {(*sample.shape, 2)}, got {tuple(noise.shape)}")
        choice_temperature = self.config.choice_temperature if choice_temperature is None else choice_temperature
        sampling_temperature = (
            self.config.sampling_temperature if sampling_temperature is None else sampling_temperature
        )
        _check_temperatures(choice_temperature, sampling_temperature)

        device = logits.device
        mask_id = self.config.mask_token_id
        sample = sample.to(device=device, dtype=torch.long)
        unknown = sample == mask_id
        logits = logits.float()
        codebook_size = logits.shape[-1]

        # 1-2. sample every token (inverse CDF), keep the known ones.
        cdf = torch.softmax(logits / sampling_temperature, dim=-1).cumsum(dim=-1)
        sampled = (cdf < noise[..., :1]).sum(dim=-1).clamp_max(codebook_size - 1)
        sampled = torch.where(unknown, sampled, sample)

        # 3. how many stay masked, per sample: floor(count * mask_ratio((t + 1) / T)), clamped to [1, unknown - 1].
        step = torch.as_tensor(step_index, dtype=torch.float64, device=device)
        ratio = (step + 1) / num_steps
        count = (
            torch.full_like(unknown[:, 0], sample.shape[1], dtype=torch.float64)
            if num_masked_at_start is None
            else num_masked_at_start.to(device=device, dtype=torch.float64)
        )
        mask_len = torch.floor(count * self.mask_ratio(ratio)).long().clamp_min(0)
        mask_len = torch.clamp(torch.minimum(unknown.sum(dim=-1) - 1, mask_len), min=1)

        # 4. re-mask the least confident new tokens (nothing at the last step: the original returns `sampled`).
        probs = torch.softmax(logits, dim=-1)
        selected = torch.gather(probs, -1, sampled[..., None]).squeeze(-1)
        annealed = (choice_temperature * (1.0 - ratio)).to(selected.dtype)
        confidence = torch.log(selected) + annealed * gumbel_noise(noise[..., 1])
        confidence = torch.where(unknown, confidence, torch.full_like(confidence, math.inf))
        sorted_confidence = torch.sort(confidence, dim=-1).values
        cut_off = torch.gather(sorted_confidence, -1, (mask_len - 1)[:, None])
        # `& unknown`: a sample with no unknown token (cut-off +inf) must not re-mask its known tokens.
        masking = (confidence <= cut_off) & unknown & (step < num_steps - 1)
        prev_sample = torch.where(masking, torch.full_like(sampled, mask_id), sampled)
        return prev_sample, sampled

    # ------------------------------------------------------------------ editing
    def add_noise(
        self,
        sample: torch.LongTensor,
        timestep: int | torch.Tensor,
        generator: GeneratorType = None,
        region: torch.BoolTensor | None = None,
    ) -> torch.LongTensor:
        """Mask the tokens that are still unknown when the step at `timestep` starts (aMUSEd's `add_noise`).

        The first step (timestep T - 1) starts fully masked; later ones from `ceil(R * mask_ratio(t / T))` random
        tokens, t the step's 0-based index and R the tokens of `region` (default: all). Tokens outside `region` are
        never masked; an empty region leaves the sample as it is.

        Args:
            sample (`torch.LongTensor` of shape `(batch_size, num_tokens)`): known token ids.
            timestep (`int`): a value of `self.timesteps`, the first step to be run.
            generator: `None`, a `torch.Generator`, or a list of `batch_size` generators (one uniform per token).
            region (`torch.BoolTensor` of shape `(batch_size, num_tokens)`, *optional*): tokens that may be masked.

        Returns:
            (batch_size, num_tokens) long ids, `mask_token_id` at the masked tokens.
        """
        if sample.ndim != 2:
            raise ValueError(f"`sample` must be (batch_size, num_tokens), got {tuple(sample.shape)}")
        batch_size, num_tokens = sample.shape
        start = self.step_index(timestep)
        if region is None:
            region = torch.ones_like(sample, dtype=torch.bool)
        elif tuple(region.shape) != tuple(sample.shape):
            raise ValueError(f"`region` must have the shape of `sample` {tuple(sample.shape)}, got {tuple(region.shape)}")
        region = region.to(sample.device)
        masked_fraction = float(self.mask_ratio(start / self.num_inference_steps))
        mask = region
        if masked_fraction < 1.0:  # at the first step the whole region is masked: nothing to draw
            num_masked = torch.ceil(region.sum(dim=-1).double() * masked_fraction).long()
            noise = rand_tensor((batch_size, num_tokens), generator, sample.device)
            noise = torch.where(region, noise, torch.full_like(noise, math.inf))  # outside the region: never chosen
            mask = mask_lowest(noise, num_masked) & region
        return torch.where(mask, torch.full_like(sample, self.config.mask_token_id), sample)


def _check_temperatures(choice_temperature: float, sampling_temperature: float) -> None:
    if (
        not isinstance(choice_temperature, (int, float))
        or isinstance(choice_temperature, bool)
        or choice_temperature < 0
    ):
        raise ValueError(f"`choice_temperature` must be a number >= 0, got {choice_temperature!r}")
    if (
        not isinstance(sampling_temperature, (int, float))
        or isinstance(sampling_temperature, bool)
        or not sampling_temperature > 0
    ):
        raise ValueError(f"`sampling_temperature` must be a number > 0, got {sampling_temperature!r}")
