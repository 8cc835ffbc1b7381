"""Training commands for MAGE with accelerate: `pretrain`, `train-tokenizer`, `finetune` and `linprobe`.

One loop (`loop.train`) serves every command; each command module supplies a `TrainingTask` (model, loss, evaluation,
saving) and its recipe defaults, and provides `add_arguments(parser)` / `run(args) -> int` for `mage_hf.cli`.
See `docs/training.md` for commands and accelerate configurations.
"""

__all__: list[str] = []
