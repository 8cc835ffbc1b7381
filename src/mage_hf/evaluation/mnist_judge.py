"""An independent MNIST classifier ("judge") for scoring generated digits: scikit-learn's MLP trained on the
4,000 training digits of `mage_hf.mnist` (never on generated images, and not a MAGE model).

It gives class probabilities (a classifier score in the manner of the Inception Score, at most 10) and hidden-layer
features (an FID-style Fréchet distance in a space that knows digits).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass
class MnistJudge:
    """The fitted classifier and its accuracy on the 1,000 held-out digits."""

    classifier: object
    heldout_accuracy: float

    @staticmethod
    def to_flat(images: np.ndarray | torch.Tensor) -> np.ndarray:
        """uint8 (N, 3, 32, 32) / (N, 32, 32) or float (N, 32, 32, 3) in [0, 1] -> (N, 1024) grayscale in [0, 1]."""
        if isinstance(images, torch.Tensor):
            images = images.detach().cpu().numpy()
        images = images.astype(np.float32) / (255.0 if images.dtype == np.uint8 else 1.0)
        if images.ndim == 4:
            channel_axis = 1 if images.shape[1] == 3 else -1
            images = images.mean(axis=channel_axis)
        return images.reshape(len(images), -1)

    def features(self, images) -> np.ndarray:
        """(N, 256) hidden-layer (ReLU) activations."""
        flat = self.to_flat(images)
        return np.maximum(flat @ self.classifier.coefs_[0] + self.classifier.intercepts_[0], 0.0)

    def probabilities(self, images) -> np.ndarray:
        """(N, 10) class probabilities."""
        return self.classifier.predict_proba(self.to_flat(images))

    def predict(self, images) -> np.ndarray:
        return self.classifier.predict(self.to_flat(images))


def train_mnist_judge(seed: int = 0) -> MnistJudge:
    """Fit the judge (MLP, one hidden layer of 256) on the training split; a few seconds on a CPU."""
    from sklearn.neural_network import MLPClassifier

    from ..mnist import load_mnist_arrays, split_indices

    digits, labels = load_mnist_arrays()
    train, test = split_indices(labels)
    flat = MnistJudge.to_flat(digits)
    classifier = MLPClassifier(hidden_layer_sizes=(256,), max_iter=200, random_state=seed)
    classifier.fit(flat[train], labels[train])
    accuracy = float((classifier.predict(flat[test]) == labels[test]).mean())
    return MnistJudge(classifier, accuracy)


__all__ = ["MnistJudge", "train_mnist_judge"]
