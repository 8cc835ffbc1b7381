"""MAGE's mask maths in one place: the decoding schedules, random token masks, and the noise they draw from.

Training (`MageForMaskedImageModeling.sample_masks`), decoding (`MageScheduler.step`) and editing
(`MageScheduler.add_noise`, the pipeline's `strength`) all call these helpers, so one formula serves all of them.
"""

import math
from collections.abc import Callable, Sequence

import torch

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


def check_generators(generator: GeneratorType, batch_size: int) -> list[torch.Generator] | None:
    """The list of per-sample generators, or None when `generator` is None or a single generator."""
    if generator is None or isinstance(generator, torch.Generator):
        return None
    if isinstance(generator, (list, tuple)):
        if len(generator) != batch_size:
            raise ValueError(f"`generator` is a list of {len(generator)} generators for a batch of {batch_size}")
        if not all(isinstance(g, torch.Generator) for g in generator):
            raise ValueError("`generator` list must hold only torch.Generator objects")
        return list(generator)
    raise ValueError(f"`generator` must be None, a torch.Generator or a list of them, got {type(generator).__name__}")


def rand_tensor(
    shape: tuple[int, ...],
    generator: GeneratorType = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """U(0, 1) samples of `shape` on `device`, drawn on the generator's device (the uniform twin of diffusers'
    `randn_tensor`). With a list of generators, row b of the first dimension is drawn from `generator[b]`, so a
    sample does not depend on the rest of its batch."""
    generators = check_generators(generator, shape[0]) if shape else None
    if generators is not None:
        rows = [torch.rand(shape[1:], generator=g, device=g.device, dtype=dtype) for g in generators]
        return torch.stack(rows).to(device)
    draw_device = generator.device if generator is not None else device
    return torch.rand(shape, generator=generator, device=draw_device, dtype=dtype).to(device)


def mask_lowest(noise: torch.Tensor, num_masked: int | torch.Tensor) -> torch.BoolTensor:
    """(B, N) noise -> (B, N) bool, True at the `num_masked` lowest-noise entries of each row.

    `num_masked` is an int or a (B,) / broadcastable tensor (per-row counts); exactly that many are True per row
    (ties are broken by position). Entries with noise `+inf` are chosen last.
    """
    ranks = noise.argsort(dim=-1, stable=True).argsort(dim=-1)
    if torch.is_tensor(num_masked):
        num_masked = num_masked.to(ranks.device).reshape(-1, *([1] * (ranks.ndim - 1)))
    return ranks < num_masked


def truncated_normal(uniform: torch.Tensor, mean: float, std: float, low: float, high: float) -> torch.Tensor:
    """Map U(0, 1) samples to a normal(mean, std) truncated to [low, high] by the inverse CDF (float64, same device)."""

    def cdf(x: float) -> float:
        return 0.5 * (1.0 + math.erf((x - mean) / (std * math.sqrt(2.0))))

    cdf_low, cdf_high = cdf(low), cdf(high)
    quantile = cdf_low + (cdf_high - cdf_low) * uniform.to(torch.float64)
    return (mean + std * torch.special.ndtri(quantile)).clamp(low, high)


__all__ = [
    "MASK_SCHEDULES",
    "check_generators",
    "gumbel_noise",
    "mask_lowest",
    "mask_ratio_at",
    "rand_tensor",
    "truncated_normal",
]
