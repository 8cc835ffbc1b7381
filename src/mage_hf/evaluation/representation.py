"""Linear probe, k-NN and few-shot accuracy of frozen image features (`mage-hf evaluate representation` is its
command).

Works with any transformers `AutoModel` image feature model (MAGE, ViTMAE, I-JEPA, ViT, ...): features are pooled
from the model output by a per-model rule (`FeatureExtractor`), extracted once for a labelled train and test split,
and then probed on the CPU:

- linear: scikit-learn logistic regression on standardised features, or MAE's linear-probe head
  (`BatchNorm1d(affine=False)` + `Linear`, trained with SGD or AdamW, cosine schedule);
- k-NN: DINO's weighted k-NN (cosine similarity on L2-normalised features, votes weighted by exp(sim / T));
- few-shot: logistic regression on n examples per class, mean ± std over seeds.

    mage-hf evaluate representation --model mage-vit-b --dataset-name mnist_dir --probes linear knn
    mage-hf evaluate representation --model facebook/vit-mae-base --dataset-name cifar10 --test-split test \
        --image-column img --output results.json
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence
from typing import Any

import torch

POOLINGS = ("auto", "mean", "cls", "pooler")
PROBES = ("linear", "knn", "few-shot")
LINEAR_METHODS = ("logistic", "bn-linear")
# pooling="auto" for the model types we know; others use "pooler" when the output has one, else "mean".
AUTO_POOLING = {"mage": "pooler", "vit": "cls", "vit_mae": "mean", "ijepa": "mean"}
# MAE's linear-probe recipe: base learning rate per 256 examples (0.1 is its LARS rate; 1e-3 for AdamW).
BN_LINEAR_BASE_LR = {"sgd": 0.1, "adamw": 1e-3}
BN_LINEAR_INIT_STD = 0.01
BN_LINEAR_EPS = 1e-6
KNN_MAX_CHUNK_ELEMENTS = 1 << 24  # similarity entries per k-NN chunk (64 MB of float32)


# ----------------------------------------------------------------------------------------------------------------
# Features
# ----------------------------------------------------------------------------------------------------------------


def _num_prefix_tokens(model: torch.nn.Module) -> int:
    """Tokens before the patch tokens in `last_hidden_state`: class, distillation and register tokens."""
    if getattr(model.config, "model_type", None) == "mage":
        return 1  # the condition (class) token at position 0
    embeddings = getattr(model, "embeddings", None)
    count = sum(
        isinstance(getattr(embeddings, name, None), torch.Tensor) for name in ("cls_token", "distillation_token")
    )
    registers = getattr(embeddings, "register_tokens", None)
    return count + (registers.shape[1] if isinstance(registers, torch.Tensor) else 0)


@contextlib.contextmanager
def _mask_ratio_zero(model: torch.nn.Module) -> Iterator[None]:
    """Temporarily set `mask_ratio` to 0 on every config object of `model` (ViTMAE masks 75 % even in eval)."""
    configs = {id(c): c for c in (getattr(m, "config", None) for m in model.modules()) if hasattr(c, "mask_ratio")}
    saved = {key: config.mask_ratio for key, config in configs.items()}
    try:
        for config in configs.values():
            config.mask_ratio = 0.0
        yield
    finally:
        for key, config in configs.items():
            config.mask_ratio = saved[key]


class FeatureExtractor:
    """A transformers image model + its image processor + a pooling rule: PIL images -> (N, D) features.

    `pooling`: "mean" (mean of the patch tokens of `last_hidden_state`, class/register tokens excluded; the spatial
    mean of a (B, C, H, W) output), "cls" (token 0 of `last_hidden_state`, after the final norm), "pooler"
    (`pooler_output`) or "auto": MAGE -> "pooler" (mean of its post-norm image tokens), ViT -> "cls", ViTMAE and
    I-JEPA -> "mean", other models "pooler" when their output has one, else "mean".

    The model is put in eval mode on `device` (default: CUDA when available). A ViTMAE runs unmasked and in patch
    order (`mask_ratio` 0 during the forward, restored afterwards; fixed `noise`), so features are deterministic.
    """

    def __init__(self, model, image_processor, pooling: str = "auto", batch_size: int = 64, device=None):
        if pooling not in POOLINGS:
            raise ValueError(f"`pooling` must be one of {list(POOLINGS)}, got {pooling!r}")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"`batch_size` must be a positive int, got {batch_size!r}")
        self.model_type = getattr(model.config, "model_type", None)
        self.num_prefix_tokens = _num_prefix_tokens(model)
        self._pooling = AUTO_POOLING.get(self.model_type) if pooling == "auto" else pooling  # None: from output
        if self._pooling == "cls" and self.num_prefix_tokens == 0:
            raise ValueError(
                f"`pooling` 'cls': {type(model).__name__} ({self.model_type}) has no class token; use 'mean'"
            )
        self.device = torch.device(device if device is not None else "cuda" if torch.cuda.is_available() else "cpu")
        self.model = model.to(self.device).eval()
        self.image_processor = image_processor
        self.batch_size = batch_size

    @classmethod
    def from_pretrained(cls, name_or_path, pooling: str = "auto", **kwargs) -> FeatureExtractor:
        """`AutoModel` + `AutoImageProcessor` from a local folder or hub id; `kwargs` go to `__init__`."""
        from transformers import AutoImageProcessor, AutoModel

        import mage_hf  # noqa: F401 - registers "mage" with the Auto classes

        model = AutoModel.from_pretrained(name_or_path)
        return cls(model, AutoImageProcessor.from_pretrained(name_or_path), pooling=pooling, **kwargs)

    @property
    def pooling_used(self) -> str:
        """The resolved rule: "mean", "cls" or "pooler" (an unknown model under "auto" is probed with one image)."""
        if self._pooling is None:
            import PIL.Image

            self([PIL.Image.new("RGB", (64, 64))])
        return self._pooling

    @torch.inference_mode()
    def __call__(self, images: Sequence) -> torch.Tensor:
        """List of PIL images (any mode; converted to RGB) -> (N, D) float32 features on the CPU."""
        if len(images) == 0:
            raise ValueError("`images` is empty")
        chunks = []
        for start in range(0, len(images), self.batch_size):
            batch = [image if image.mode == "RGB" else image.convert("RGB")
                     for image in images[start: start + self.batch_size]]
            pixel_values = self.image_processor(images=batch, return_tensors="pt")["pixel_values"]
            chunks.append(self._forward(pixel_values.to(self.device, self.model.dtype)).float().cpu())
        return torch.cat(chunks)

    def _forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        if self.model_type != "vit_mae":
            return self._pool(self.model(pixel_values=pixel_values))
        patch = self.model.config.patch_size
        num_patches = (pixel_values.shape[2] // patch) * (pixel_values.shape[3] // patch)
        # Increasing noise: argsort is the identity, so no token is shuffled (and, with mask_ratio 0, none dropped).
        noise = torch.arange(num_patches, device=self.device, dtype=torch.float32).expand(len(pixel_values), -1)
        with _mask_ratio_zero(self.model):
            return self._pool(self.model(pixel_values=pixel_values, noise=noise))

    def _pool(self, output) -> torch.Tensor:
        pooler_output = getattr(output, "pooler_output", None)
        if self._pooling is None:
            self._pooling = "pooler" if pooler_output is not None else "mean"
        if self._pooling == "pooler":
            if pooler_output is None:
                raise ValueError(
                    f"`pooling` 'pooler': {type(self.model).__name__} returns no `pooler_output`; use 'mean' or 'cls'"
                )
            return pooler_output.flatten(1)
        hidden = output.last_hidden_state
        if hidden.ndim == 4:  # convolutional (B, C, H, W) feature map
            if self._pooling == "cls":
                raise ValueError(f"`pooling` 'cls': {type(self.model).__name__} outputs a feature map; use 'mean'")
            return hidden.mean(dim=(2, 3))
        if self._pooling == "cls":
            return hidden[:, 0]
        return hidden[:, self.num_prefix_tokens:].mean(dim=1)


def _as_label(value: Any, label_column: str) -> int:
    import numpy as np

    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(  # noqa: TRY004 - bad data, reported like every other data check
            f"`--label-column` {label_column!r} must hold integer class ids, got {value!r}"
        )
    return int(value)


def extract_features(
    extractor: FeatureExtractor, dataset, image_column: str = "image", label_column: str = "label", progress=False
) -> tuple[torch.Tensor, torch.Tensor]:
    """Features of a `datasets.Dataset` -> ((N, D) float32, (N,) int64 labels), in dataset order."""
    from ..training.data import to_rgb_image

    if len(dataset) == 0:
        raise ValueError("the dataset is empty: no features to extract")
    missing = [(f, c) for f, c in (("--image-column", image_column), ("--label-column", label_column))
               if c not in dataset.column_names]
    if missing:
        flag, column = missing[0]
        raise ValueError(f"`{flag}` {column!r} is not a column of the dataset; its columns are {dataset.column_names}")
    dataset = dataset.select_columns([image_column, label_column])
    step = extractor.batch_size
    starts = range(0, len(dataset), step)
    if progress:
        from tqdm.auto import tqdm

        starts = tqdm(starts, desc="features", unit="batch")
    features, labels = [], []
    for start in starts:
        batch = dataset[start: start + step]
        features.append(extractor([to_rgb_image(image, image_column) for image in batch[image_column]]))
        labels.extend(_as_label(label, label_column) for label in batch[label_column])
    return torch.cat(features), torch.tensor(labels, dtype=torch.int64)


# ----------------------------------------------------------------------------------------------------------------
# Probes
# ----------------------------------------------------------------------------------------------------------------


def _check_split(x, y, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    x, y = torch.as_tensor(x), torch.as_tensor(y)
    if x.ndim != 2 or len(x) == 0:
        raise ValueError(f"`{name}_x` must be a non-empty (N, D) array, got shape {tuple(x.shape)}")
    if y.shape != (len(x),) or y.is_floating_point() or y.is_complex() or y.dtype == torch.bool:
        raise ValueError(f"`{name}_y` must be ({len(x)},) integer labels, got {y.dtype} of shape {tuple(y.shape)}")
    if int(y.min()) < 0:
        raise ValueError(f"`{name}_y` must hold class ids >= 0, got {int(y.min())}")
    return x.float(), y.long()


def _check_probe_inputs(train_x, train_y, test_x, test_y):
    """Validated (float32 features, int64 labels) of both splits; the feature widths must agree."""
    train_x, train_y = _check_split(train_x, train_y, "train")
    test_x, test_y = _check_split(test_x, test_y, "test")
    if train_x.shape[1] != test_x.shape[1]:
        raise ValueError(f"train features have width {train_x.shape[1]}, test features {test_x.shape[1]}")
    return train_x, train_y, test_x, test_y


def _accuracy(predictions: torch.Tensor, labels: torch.Tensor) -> float:
    return int((predictions.cpu().long() == labels).sum()) / len(labels)


def linear_probe_accuracy(
    train_x, train_y, test_x, test_y, *, method: str = "logistic", seed: int = 0, epochs: int = 90,
    batch_size: int = 256, optimizer: str = "sgd", learning_rate: float | None = None, weight_decay: float = 0.0,
    c: float = 1.0, max_iter: int = 1000,
) -> float:
    """Top-1 test accuracy of a linear classifier on (N, D) train features.

    "logistic": standardise, then scikit-learn `LogisticRegression(C=c, max_iter=max_iter)`. "bn-linear": MAE's
    head, `BatchNorm1d(affine=False)` + `Linear` (init std 0.01), `epochs` of shuffled batches of `batch_size`
    (last incomplete batch dropped), `optimizer` "sgd" (momentum 0.9) or "adamw", learning rate
    `learning_rate` or base (0.1 SGD, 1e-3 AdamW) x batch / 256, 10 % linear warm-up then cosine decay. Both are
    deterministic for a given `seed`.
    """
    train_x, train_y, test_x, test_y = _check_probe_inputs(train_x, train_y, test_x, test_y)
    if len(torch.unique(train_y)) < 2:
        raise ValueError("a linear probe needs training examples of at least 2 classes")
    if method == "logistic":
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        classifier = make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=max_iter, random_state=seed))
        classifier.fit(train_x.numpy(), train_y.numpy())
        return _accuracy(torch.from_numpy(classifier.predict(test_x.numpy())), test_y)
    if method == "bn-linear":
        num_classes = int(max(train_y.max(), test_y.max())) + 1
        head = _train_bn_linear(train_x, train_y, num_classes, seed=seed, epochs=epochs, batch_size=batch_size,
                                optimizer=optimizer, learning_rate=learning_rate, weight_decay=weight_decay)
        with torch.inference_mode():
            return _accuracy(head(test_x).argmax(dim=1), test_y)
    raise ValueError(f"`method` (`--linear-method`) must be one of {list(LINEAR_METHODS)}, got {method!r}")


def _train_bn_linear(train_x, train_y, num_classes, *, seed, epochs, batch_size, optimizer, learning_rate,
                     weight_decay) -> torch.nn.Module:
    """Train MAE's BatchNorm + Linear head on fixed features; returns it in eval mode."""
    if epochs < 1 or batch_size < 1:
        raise ValueError(f"`epochs` and `batch_size` must be >= 1, got {epochs} and {batch_size}")
    if optimizer not in BN_LINEAR_BASE_LR:
        raise ValueError(f"`optimizer` must be one of {list(BN_LINEAR_BASE_LR)}, got {optimizer!r}")
    if len(train_x) < 2:
        raise ValueError("the bn-linear probe needs at least 2 training examples (BatchNorm batch statistics)")
    generator = torch.Generator().manual_seed(seed)
    batch_size = min(batch_size, len(train_x))
    head = torch.nn.Sequential(
        torch.nn.BatchNorm1d(train_x.shape[1], affine=False, eps=BN_LINEAR_EPS),
        torch.nn.Linear(train_x.shape[1], num_classes),
    )
    with torch.no_grad():
        head[1].weight.normal_(0.0, BN_LINEAR_INIT_STD, generator=generator)
        head[1].bias.zero_()
    peak_lr = learning_rate if learning_rate is not None else BN_LINEAR_BASE_LR[optimizer] * batch_size / 256
    if optimizer == "sgd":
        opt = torch.optim.SGD(head.parameters(), lr=peak_lr, momentum=0.9, weight_decay=weight_decay)
    else:
        opt = torch.optim.AdamW(head.parameters(), lr=peak_lr, weight_decay=weight_decay)
    steps_per_epoch = len(train_x) // batch_size
    total_steps = epochs * steps_per_epoch
    warmup_steps = total_steps // 10
    head.train()
    step = 0
    for _ in range(epochs):
        order = torch.randperm(len(train_x), generator=generator)
        for index in range(steps_per_epoch):
            if step < warmup_steps:
                lr = peak_lr * (step + 1) / warmup_steps
            else:
                lr = 0.5 * peak_lr * (1 + math.cos(math.pi * (step - warmup_steps) / (total_steps - warmup_steps)))
            for group in opt.param_groups:
                group["lr"] = lr
            batch = order[index * batch_size: (index + 1) * batch_size]
            loss = torch.nn.functional.cross_entropy(head(train_x[batch]), train_y[batch])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
    return head.eval()


def knn_accuracy(train_x, train_y, test_x, test_y, *, k: int = 20, temperature: float = 0.07) -> float:
    """DINO's weighted k-NN: cosine similarity of L2-normalised features, the k nearest train examples vote for
    their class with weight exp(sim / temperature); chunked over test rows so memory stays small."""
    train_x, train_y, test_x, test_y = _check_probe_inputs(train_x, train_y, test_x, test_y)
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"`k` (`--k`) must be an int >= 1, got {k!r}")
    if not temperature > 0:
        raise ValueError(f"`temperature` must be > 0, got {temperature}")
    k = min(k, len(train_x))
    num_classes = int(max(train_y.max(), test_y.max())) + 1
    train_n = torch.nn.functional.normalize(train_x, dim=1)
    test_n = torch.nn.functional.normalize(test_x, dim=1)
    chunk = max(1, KNN_MAX_CHUNK_ELEMENTS // len(train_n))
    correct = 0
    for start in range(0, len(test_n), chunk):
        similarity = test_n[start: start + chunk] @ train_n.T  # (chunk, N_train)
        top_sim, top_index = similarity.topk(k, dim=1)
        votes = torch.zeros(len(top_sim), num_classes)
        votes.scatter_add_(1, train_y[top_index], (top_sim / temperature).exp())
        correct += int((votes.argmax(dim=1) == test_y[start: start + chunk]).sum())
    return correct / len(test_n)


def check_shots(train_y: torch.Tensor, shots: Sequence[int]) -> None:
    """Every requested shot must be >= 1 and at most the smallest training class."""
    classes, counts = torch.unique(torch.as_tensor(train_y), return_counts=True)
    for shot in shots:
        if isinstance(shot, bool) or not isinstance(shot, int) or shot < 1:
            raise ValueError(f"`shots` (`--shots`) must be ints >= 1, got {shot!r}")
        short = classes[counts < shot]
        if len(short):
            raise ValueError(
                f"`shots` (`--shots`) {shot}: needs {shot} training examples of every class, but class "
                f"{int(short[0])} has {int(counts[classes == short[0]])} ({len(short)} classes have too few)"
            )


def few_shot_accuracy(
    train_x, train_y, test_x, test_y, *, shots: Sequence[int] = (1, 5, 10), seeds: Sequence[int] = (0, 1, 2, 3, 4),
) -> dict[int, tuple[float, float]]:
    """shot -> (mean, std over seeds) of logistic-regression accuracy trained on `shot` examples per class.

    Seed s draws, for every class, a random permutation of its examples (numpy `default_rng(s)`) and keeps the first
    `shot`, so with one seed the 1-shot set is inside the 5-shot set. std is the population std (0 for one seed).
    """
    import numpy as np

    train_x, train_y, test_x, test_y = _check_probe_inputs(train_x, train_y, test_x, test_y)
    if len(seeds) == 0:
        raise ValueError("`seeds` (`--seeds`) must not be empty")
    check_shots(train_y, shots)
    labels = train_y.numpy()
    class_indices = [np.flatnonzero(labels == c) for c in np.unique(labels)]
    results = {}
    for shot in shots:
        accuracies = []
        for seed in seeds:
            rng = np.random.default_rng(seed)
            chosen = torch.from_numpy(np.concatenate([rng.permutation(idx)[:shot] for idx in class_indices]))
            accuracies.append(linear_probe_accuracy(train_x[chosen], train_y[chosen], test_x, test_y, seed=seed))
        results[shot] = (float(np.mean(accuracies)), float(np.std(accuracies)))
    return results


def evaluate_features(
    train_x, train_y, test_x, test_y, *, probes: Sequence[str] = PROBES, linear_method: str = "logistic",
    k: int = 20, temperature: float = 0.07, shots: Sequence[int] = (1, 5, 10),
    seeds: Sequence[int] = (0, 1, 2, 3, 4), seed: int = 0,
) -> dict:
    """Run the chosen probes -> a JSON-able dict: sizes, then "linear" / "knn" / "few_shot" with accuracies in [0, 1]
    (`seed` keys the linear probe; few-shot uses `seeds`)."""
    unknown = [p for p in probes if p not in PROBES]
    if unknown or not probes:
        raise ValueError(f"`probes` (`--probes`) must be a non-empty subset of {list(PROBES)}, got {list(probes)}")
    train_x, train_y, test_x, test_y = _check_probe_inputs(train_x, train_y, test_x, test_y)
    results: dict[str, Any] = {
        "num_train": len(train_x),
        "num_test": len(test_x),
        "feature_dim": train_x.shape[1],
        "num_classes": int(torch.unique(torch.cat([train_y, test_y])).numel()),
    }
    if "linear" in probes:
        accuracy = linear_probe_accuracy(train_x, train_y, test_x, test_y, method=linear_method, seed=seed)
        results["linear"] = {"method": linear_method, "seed": seed, "accuracy": accuracy}
    if "knn" in probes:
        accuracy = knn_accuracy(train_x, train_y, test_x, test_y, k=k, temperature=temperature)
        results["knn"] = {"k": k, "temperature": temperature, "accuracy": accuracy}
    if "few-shot" in probes:
        per_shot = few_shot_accuracy(train_x, train_y, test_x, test_y, shots=shots, seeds=seeds)
        results["few_shot"] = {
            "seeds": list(seeds),
            "shots": {str(shot): {"mean": mean, "std": std} for shot, (mean, std) in per_shot.items()},
        }
    return results


def format_results(results: dict) -> str:
    """The probe accuracies of `evaluate_features` as a small markdown table (percent)."""
    rows = []
    if "linear" in results:
        rows.append((f"linear ({results['linear']['method']})", f"{100 * results['linear']['accuracy']:.2f}"))
    if "knn" in results:
        knn = results["knn"]
        rows.append((f"k-NN (k={knn['k']}, T={knn['temperature']})", f"{100 * knn['accuracy']:.2f}"))
    if "few_shot" in results:
        num_seeds = len(results["few_shot"]["seeds"])
        for shot, value in results["few_shot"]["shots"].items():
            rows.append((f"{shot}-shot ({num_seeds} seeds)", f"{100 * value['mean']:.2f} ± {100 * value['std']:.2f}"))
    return "\n".join(["| probe | accuracy (%) |", "|---|---|", *(f"| {name} | {value} |" for name, value in rows)])


__all__ = [
    "AUTO_POOLING",
    "FeatureExtractor",
    "check_shots",
    "evaluate_features",
    "extract_features",
    "few_shot_accuracy",
    "format_results",
    "knn_accuracy",
    "linear_probe_accuracy",
]
