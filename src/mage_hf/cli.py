"""The `mage-hf` command line (also `python -m mage_hf`): one sub-command per job.

Each command lives in its own module, which provides `add_arguments(parser)` and `run(args) -> int`; modules are
imported only when their command runs, so `mage-hf --help` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# command name -> (module implementing it, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "generate": ("mage_hf.generate_cli", "generate or inpaint images with a MagePipeline (default: mage-mnist)"),
    "convert": ("mage_hf.conversion_cli", "convert original MAGE / VQGAN checkpoints to mage_hf folders"),
    "push-to-hub": ("mage_hf.hub_cli", "upload a saved mage_hf folder (with its model card) to the Hugging Face Hub"),
    "pretrain": ("mage_hf.training.pretrain", "masked-token pretraining (optionally class-conditional) with accelerate"),
    "train-tokenizer": ("mage_hf.training.train_tokenizer", "train or continue the VQGAN tokenizer with accelerate"),
    "finetune": ("mage_hf.training.finetune", "fine-tune a pretrained MAGE for image classification"),
    "linprobe": ("mage_hf.training.linprobe", "linear probe (BatchNorm + linear head) on a frozen MAGE encoder"),
    "evaluate": ("mage_hf.evaluation.evaluate_cli", "evaluate generation (FID, IS, precision/recall) or representations"),
    "demo": ("mage_hf.demo.command", "serve the gradio demo (generate, inpaint, variations, features) in a browser"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mage-hf", description="MAGE for the Hugging Face ecosystem.")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (_, help_text) in COMMANDS.items():
        subparsers.add_parser(name, help=help_text, description=help_text, add_help=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    # Parse the command name first, then let its module define (and parse) its own arguments.
    if argv and argv[0] in COMMANDS:
        module = importlib.import_module(COMMANDS[argv[0]][0])
        sub = argparse.ArgumentParser(prog=f"mage-hf {argv[0]}", description=COMMANDS[argv[0]][1])
        module.add_arguments(sub)
        return int(module.run(sub.parse_args(argv[1:])) or 0)
    parser.parse_args(argv)  # prints usage / help and exits
    return 2


if __name__ == "__main__":
    sys.exit(main())
