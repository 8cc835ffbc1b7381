"""`mage-hf evaluate generation|representation`: one sub-command per kind of evaluation."""

from __future__ import annotations

import argparse
import importlib

# kind -> (module with `add_arguments(parser)` and `run(args) -> int`, one-line help)
KINDS: dict[str, tuple[str, str]] = {
    "generation": ("mage_hf.evaluation.generation", "FID, Inception Score and precision/recall of generated images"),
    "representation": (
        "mage_hf.evaluation.representation",
        "linear probe, k-NN and few-shot accuracy of any transformers image feature model",
    ),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    kinds = parser.add_subparsers(dest="kind", metavar="KIND", required=True)
    for name, (module_name, help_text) in KINDS.items():
        sub = kinds.add_parser(name, help=help_text, description=help_text)
        sub.set_defaults(_module=module_name)
        importlib.import_module(module_name).add_arguments(sub)


def run(args: argparse.Namespace) -> int:
    return int(importlib.import_module(args._module).run(args) or 0)
