"""Flags shared by the commands that sample from a pipeline (`generate`, `evaluate generation`): one set of names,
one set of defaults, and the pipeline loading they imply."""

import argparse
import contextlib

import torch

DTYPES = ("float32", "bfloat16", "float16")
DEFAULT_STEPS = 12  # the original's gen_img_uncond.py
# Classifier-free guidance when classes are asked for (the scale mage-mnist's card measures); 1 (off) otherwise.
DEFAULT_CONDITIONAL_GUIDANCE = 2.0


def add_sampling_arguments(parser: argparse.ArgumentParser, batch_help: str) -> None:
    """`--num-inference-steps`, guidance, temperatures, `--seed`, batching, precision, device and `--compile`."""
    group = parser.add_argument_group("sampling")
    group.add_argument("--num-inference-steps", "--steps", type=int, default=DEFAULT_STEPS,
                       help=f"decoding steps (default {DEFAULT_STEPS}; the paper's FID uses 20)")
    group.add_argument("--guidance-scale", type=float,
                       help=f"classifier-free guidance (default {DEFAULT_CONDITIONAL_GUIDANCE} when classes are "
                            "requested, else 1 = off)")
    group.add_argument("--guidance-schedule", choices=("constant", "linear"), default="constant")
    group.add_argument("--choice-temperature", type=float, help="re-masking temperature (scheduler default 4.5)")
    group.add_argument("--sampling-temperature", type=float, help="token sampling temperature (scheduler default 1)")
    group.add_argument("--seed", type=int, default=0, help="image i is sampled with its own generator, seed + i")
    group.add_argument("--batch-size", type=int, help=batch_help)
    group.add_argument("--dtype", choices=DTYPES, default="float32", help="weights' dtype (default float32)")
    group.add_argument("--autocast", choices=("bfloat16", "float16"),
                       help="run under torch.autocast in this dtype (weights stay as --dtype)")
    group.add_argument("--compile", action="store_true",
                       help="torch.compile the decoding step and the VQGAN convs (a new batch size compiles again)")
    group.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")


def check_sampling_arguments(args: argparse.Namespace) -> None:
    for flag in ("num_inference_steps", "batch_size"):
        value = getattr(args, flag)
        if value is not None and value < 1:
            raise ValueError(f"`--{flag.replace('_', '-')}` must be >= 1, got {value}")


def guidance_scale(args: argparse.Namespace, conditional: bool) -> float:
    """The one default rule: `--guidance-scale`, else 2 with classes, 1 without; guidance needs classes."""
    if args.guidance_scale is None:
        return DEFAULT_CONDITIONAL_GUIDANCE if conditional else 1.0
    if args.guidance_scale != 1.0 and not conditional:
        raise ValueError("`--guidance-scale` needs classes (`--class-label` / `--class-conditional`)")
    return args.guidance_scale


def pipeline_call_kwargs(args: argparse.Namespace, conditional: bool) -> dict:
    """Keyword arguments of every pipeline call from the sampling flags."""
    return {
        "num_inference_steps": args.num_inference_steps,
        "guidance_scale": guidance_scale(args, conditional),
        "guidance_schedule": args.guidance_schedule,
        "choice_temperature": args.choice_temperature,
        "sampling_temperature": args.sampling_temperature,
    }


def load_pipeline(path: str | None, args: argparse.Namespace, device: torch.device | str | None = None):
    """The `MagePipeline` at `path` (None or "default": the embedded mage-mnist) in `--dtype` on the device,
    progress bar off, compiled with `--compile`."""
    from ..default_model import DEFAULT_PIPELINE
    from ..pipeline_mage import MagePipeline

    folder = DEFAULT_PIPELINE if path in (None, "default") else path
    pipe = MagePipeline.from_pretrained(folder, dtype=getattr(torch, args.dtype)).to(device or args.device)
    pipe.set_progress_bar_config(disable=True)
    if args.compile:
        pipe.compile_decoding_step(dynamic=False)
        pipe.vqvae.compile_convs(dynamic=False)
    return pipe


def precision_context(args: argparse.Namespace, device: torch.device | str):
    """`torch.autocast` in `--autocast`'s dtype, or nothing."""
    if not args.autocast:
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=getattr(torch, args.autocast))


__all__ = [
    "DTYPES",
    "add_sampling_arguments",
    "check_sampling_arguments",
    "guidance_scale",
    "load_pipeline",
    "pipeline_call_kwargs",
    "precision_context",
]
