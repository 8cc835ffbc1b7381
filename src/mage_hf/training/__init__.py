"""Training commands for MAGE with accelerate: `pretrain`, `train-tokenizer`, `finetune` and `linprobe`.

One loop (`loop.run_training`, a `Trainer`) serves every command; each command module supplies a `TrainingTask`
(model, loss, evaluation, saving) and `add_arguments(parser)` with its recipe defaults; `mage_hf.commands.train`
is the command table.
See `docs/training.md` for commands and accelerate configurations.
"""

__all__: list[str] = []
