"""Checks of user input shared by the models, the scheduler and the pipeline.

Checks of tensor *values* (an id out of the vocabulary, masks that disagree) read the tensor back to the host, which
is a device synchronisation on a GPU and a data-dependent branch that `torch.compile(fullgraph=True)` and
`torch.export` cannot trace. They run in eager mode only (`value_checks_enabled()`); under compilation or export the
caller has validated its input once where it entered (the pipeline checks once per call, not once per step).
Shape and dtype checks are free and always run.
"""

import torch


def value_checks_enabled() -> bool:
    """False while `torch.compile` or `torch.export` traces the code, True in eager mode."""
    return not (torch.compiler.is_compiling() or torch.compiler.is_exporting())


def check_integer_tensor(name: str, value, shape_hint: str) -> torch.Tensor:
    """`value` must be an integer (not bool) torch.Tensor; `shape_hint` describes the expected shape."""
    if not isinstance(value, torch.Tensor) or value.is_floating_point() or value.is_complex() or value.dtype == torch.bool:
        found = f"dtype {value.dtype}" if isinstance(value, torch.Tensor) else type(value).__name__
        raise TypeError(f"`{name}` must be an integer torch.Tensor of shape {shape_hint}, got {found}")
    return value


def check_id_range(name: str, ids: torch.Tensor, low: int, high: int, high_name: str = "") -> None:
    """Every value of `ids` must lie in [low, high) (eager mode only, see the module docstring); `high_name` names
    the bound in the message (e.g. "vocab_size")."""
    if not value_checks_enabled() or not ids.numel():
        return
    found_low, found_high = int(ids.min()), int(ids.max())
    if found_low < low or found_high >= high:
        bound = f"{high_name}={high}" if high_name else str(high)
        raise ValueError(f"`{name}` must be in [{low}, {bound}), got values in [{found_low}, {found_high}]")


def check_bool_mask(name: str, mask, batch: int, num_tokens: int) -> torch.BoolTensor:
    """A (batch, num_tokens) mask over image tokens, as bool."""
    if not isinstance(mask, torch.Tensor):
        raise TypeError(f"`{name}` must be a torch.Tensor of shape ({batch}, {num_tokens}), got {type(mask).__name__}")
    if tuple(mask.shape) != (batch, num_tokens):
        raise ValueError(
            f"`{name}` must have shape ({batch}, {num_tokens}) (batch, image tokens), got {tuple(mask.shape)}"
        )
    return mask.bool()


__all__ = ["check_bool_mask", "check_id_range", "check_integer_tensor", "value_checks_enabled"]
