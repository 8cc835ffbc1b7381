"""The four training commands, `mage-hf pretrain | train-tokenizer | finetune | linprobe`, through one table.

Each names the module that defines its flags (`add_arguments`: the recipe's defaults) and its `TrainingTask`; all run
on the one training loop, `mage_hf.training.loop.run_training` (accelerate; see docs/training.md).
"""

import argparse
import importlib

# command -> (module with `add_arguments` and the task, task class name)
TRAINING_COMMANDS: dict[str, tuple[str, str]] = {
    "pretrain": ("mage_hf.training.pretrain", "PretrainingTask"),
    "train-tokenizer": ("mage_hf.training.train_tokenizer", "TokenizerTask"),
    "finetune": ("mage_hf.training.finetune", "FinetuneTask"),
    "linprobe": ("mage_hf.training.linprobe", "LinearProbeTask"),
}


class TrainingCommand:
    """A training command: the flags of its module, then `run_training` with its task."""

    def __init__(self, name: str):
        self.module_name, self.task_name = TRAINING_COMMANDS[name]

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        importlib.import_module(self.module_name).add_arguments(parser)

    def run(self, args: argparse.Namespace) -> int:
        from ..training.loop import run_training

        return run_training(args, getattr(importlib.import_module(self.module_name), self.task_name))


pretrain = TrainingCommand("pretrain")
train_tokenizer = TrainingCommand("train-tokenizer")
finetune = TrainingCommand("finetune")
linprobe = TrainingCommand("linprobe")

__all__ = ["TRAINING_COMMANDS", "TrainingCommand", "finetune", "linprobe", "pretrain", "train_tokenizer"]
