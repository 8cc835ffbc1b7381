"""Shared fixtures: the golden reference set computed by the original MAGE code.

The golden directory is a parameter (env `MAGE_GOLDEN_DIR`, default `../shared/golden/tiny` beside the repo), and
every size is read from its `golden.json`, so the same tests run on other golden sets.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_GOLDEN_DIR = REPO_ROOT.parent / "shared" / "golden" / "tiny"


@dataclass
class Golden:
    """The golden set: its folder, hyper-parameters (`golden.json`) and reference tensors."""

    root: Path
    meta: dict
    tensors: dict[str, torch.Tensor]

    @property
    def pretraining_checkpoint(self) -> Path:
        return self.root / "mage_original.pth"

    @property
    def finetuned_checkpoint(self) -> Path:
        return self.root / "mage_finetuned_original.pth"

    @property
    def vqgan_checkpoint(self) -> Path:
        return self.root / "vqgan_original.ckpt"

    @property
    def num_heads(self) -> int:
        return self.meta["mage_kwargs"]["num_heads"]

    @property
    def decoder_num_heads(self) -> int:
        return self.meta["mage_kwargs"]["decoder_num_heads"]

    @property
    def codebook_size(self) -> int:
        return self.meta["vq_n_embed"]


def golden_dir() -> Path:
    return Path(os.environ.get("MAGE_GOLDEN_DIR", DEFAULT_GOLDEN_DIR))


@pytest.fixture(scope="session")
def golden() -> Golden:
    from safetensors.torch import load_file

    root = golden_dir()
    if not (root / "golden.json").is_file():
        pytest.skip(f"golden set not found at {root} (set MAGE_GOLDEN_DIR)")
    meta = json.loads((root / "golden.json").read_text())
    return Golden(root=root, meta=meta, tensors=load_file(root / "golden.safetensors"))


@pytest.fixture(scope="session")
def golden_mim_model(golden):
    """The golden pretraining checkpoint converted in memory (`MageForMaskedImageModeling`, eval mode)."""
    from mage_hf.conversion import load_original_mage

    return load_original_mage(golden.pretraining_checkpoint, golden.num_heads, golden.decoder_num_heads)


@pytest.fixture(scope="session")
def golden_classifier(golden):
    """The golden fine-tuned checkpoint converted in memory (`MageForImageClassification`, eval mode)."""
    from mage_hf.conversion import load_original_mage

    return load_original_mage(golden.finetuned_checkpoint, golden.num_heads, golden.decoder_num_heads)


def assert_close(actual: torch.Tensor, expected: torch.Tensor, atol: float = 1e-4, name: str = "") -> None:
    """Max-abs-difference check with a readable message (the golden tolerance is 1e-4)."""
    assert actual.shape == expected.shape, f"{name}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    diff = (actual.float() - expected.float()).abs().max().item() if actual.numel() else 0.0
    assert diff <= atol, f"{name}: max abs difference {diff:.3g} > {atol}"
