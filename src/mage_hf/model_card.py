"""Model cards (README.md with Hub metadata) for the folders `mage_hf` writes. Offline: nothing is downloaded."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from huggingface_hub import EvalResult, ModelCard, ModelCardData

ORIGINAL_REPO_URL = "https://github.com/LTH14/mage"
PAPER_URL = "https://arxiv.org/abs/2211.09117"
BASE_TAGS = ["mage", "masked-image-modeling", "image-generation", "image-feature-extraction"]
_PIXELS = 'pixel_values = processor(Image.open("image.jpg").convert("RGB"), return_tensors="pt").pixel_values'


@dataclass(frozen=True)
class CardKind:
    """What a kind of folder holds, its Hub pipeline tag, the task of its metrics and how to load it (`imports`,
    then the image processor when `takes_images`, then `snippet`)."""

    holds: str
    pipeline_tag: str | None
    metrics_task: str
    imports: str
    snippet: str
    takes_images: bool = True


CARD_KINDS = {
    "pretraining": CardKind(
        "the MAGE pretraining network (VQGAN tokenizer, ViT encoder, decoder and masked-token head)",
        "image-feature-extraction",
        "unconditional-image-generation",
        "from mage_hf import MageForMaskedImageModeling\nfrom transformers import AutoImageProcessor, AutoModel",
        'model = MageForMaskedImageModeling.from_pretrained("{repo}")  # generation / pretraining\n'
        'encoder = AutoModel.from_pretrained("{repo}")  # MageModel, for features\n'
        f"{_PIXELS}\nfeatures = encoder(pixel_values=pixel_values).pooler_output",
    ),
    "features": CardKind(
        "the MAGE encoder (VQGAN tokenizer + ViT), for image features",
        "image-feature-extraction",
        "image-classification",
        "from transformers import AutoImageProcessor, AutoModel",
        f'model = AutoModel.from_pretrained("{{repo}}")\n{_PIXELS}\nfeatures = model(pixel_values=pixel_values).pooler_output',
    ),
    "classification": CardKind(
        "a MAGE image classifier (encoder, global average pooling, `fc_norm`, linear head)",
        "image-classification",
        "image-classification",
        "from transformers import AutoImageProcessor, AutoModelForImageClassification",
        'model = AutoModelForImageClassification.from_pretrained("{repo}")\n'
        f"{_PIXELS}\nlabel = model.config.id2label[model(pixel_values=pixel_values).logits.argmax(-1).item()]",
    ),
    "vqgan": CardKind(
        "the VQGAN tokenizer of MAGE (images in [0, 1] <-> codebook token ids)",
        None,
        "image-to-image",
        "from mage_hf import MageVQModel\nfrom transformers import AutoImageProcessor",
        'vqgan = MageVQModel.from_pretrained("{repo}")\n'
        f"{_PIXELS}\ntoken_ids = vqgan.tokenize(pixel_values)  # (1, N)\n"
        "reconstruction = vqgan.decode_indices(token_ids)  # (1, 3, H, W), not clipped",
    ),
    "pipeline": CardKind(
        "a MAGE image generation pipeline (VQGAN, MAGE transformer, MaskGIT-style scheduler)",
        "unconditional-image-generation",
        "unconditional-image-generation",
        "from mage_hf import MagePipeline",
        'pipe = MagePipeline.from_pretrained("{repo}")\n'
        "images = pipe(batch_size=4, num_inference_steps=20).images",
        takes_images=False,
    ),
}
_PROCESSOR = 'processor = AutoImageProcessor.from_pretrained("{repo}")  # pixels in [0, 1], no mean/std\n'

CITATION = """@inproceedings{li2023mage,
  title={MAGE: MAsked Generative Encoder to Unify Representation Learning and Image Synthesis},
  author={Li, Tianhong and Chang, Huiwen and Mishra, Shlok Kumar and Zhang, Han and Katabi, Dina and Krishnan, Dilip},
  booktitle={Proceedings of the IEEE/CVF Conference on Computer Vision and Pattern Recognition (CVPR)},
  year={2023}
}"""


def write_model_card(
    save_dir: str | os.PathLike,
    *,
    kind: str,
    base_model: str | None = None,
    datasets: list[str] | None = None,
    metrics: dict[str, float] | None = None,
    dataset_name_for_metrics: str | None = None,
    sample_image: str | None = None,
    extra_text: str = "",
    converted_from: str | None = None,
    model_name: str | None = None,
) -> Path:
    """Write `save_dir/README.md`: Hub metadata, what the folder holds, how to load it, the citation.

    `kind` is one of `CARD_KINDS`. `metrics` (e.g. `{"fid": 11.1}`) become eval results on
    `dataset_name_for_metrics` (default `datasets[0]`); `sample_image` is a path relative to `save_dir`;
    `converted_from` names the original checkpoint(s) the folder was converted from; `model_name` (default: the
    folder's name) titles the card and its loading snippet. Returns the card's path.

    Example: `write_model_card("mage-vitb", kind="pretraining", converted_from="mage-vitb-1600.pth")`
    """
    if kind not in CARD_KINDS:
        raise ValueError(f"`kind` must be one of {sorted(CARD_KINDS)}, got {kind!r}")
    spec, save_dir = CARD_KINDS[kind], Path(save_dir)
    model_name = model_name or save_dir.resolve().name
    eval_results = None
    if metrics:
        dataset = dataset_name_for_metrics or (datasets[0] if datasets else None)
        if dataset is None:
            raise ValueError(
                "`metrics` need `dataset_name_for_metrics` or `datasets` (the evaluation dataset)"
            )
        eval_results = [
            EvalResult(
                task_type=spec.metrics_task,
                dataset_type=dataset,
                dataset_name=dataset,
                metric_type=name,
                metric_value=float(value),
            )
            for name, value in metrics.items()
        ]
    card_data = ModelCardData(
        license="mit",
        library_name="mage_hf",  # loads after `import mage_hf` (no `auto_map`), so not plain transformers/diffusers
        pipeline_tag=spec.pipeline_tag,
        tags=BASE_TAGS + [tag for tag in (spec.pipeline_tag, "vqgan" if kind == "vqgan" else None) if tag],
        base_model=base_model,
        datasets=datasets,
        metrics=list(metrics) if metrics else None,
        model_name=model_name,
        eval_results=eval_results,
    )

    origin = f"Original code and checkpoints: [{ORIGINAL_REPO_URL}]({ORIGINAL_REPO_URL})."
    if converted_from:
        origin = (
            f"Converted from `{converted_from}` of the [original MAGE release]({ORIGINAL_REPO_URL}) (MIT licence) "
            "with `mage-hf convert`, whose output is tested against the original code (float32, 1e-4)."
        )
    intro = (
        f"MAGE ([MAsked Generative Encoder]({PAPER_URL}), Li et al., CVPR 2023) for the Hugging Face ecosystem, "
        f"with the `mage_hf` package. This folder holds {spec.holds}."
    )
    sections = [f"# {model_name}", intro, origin]
    if sample_image:
        sections.append(f"![samples]({sample_image})")
    if metrics:
        rows = "\n".join(f"| {name} | {value:g} |" for name, value in metrics.items())
        sections.append(
            f"## Results ({eval_results[0].dataset_name})\n\n| metric | value |\n|---|---|\n{rows}"
        )
    imports = "import mage_hf  # registers MAGE with the transformers Auto classes\n" + spec.imports
    if spec.takes_images:
        imports, processor = f"{imports}\nfrom PIL import Image", _PROCESSOR
    else:
        processor = ""
    code = f"{imports}\n\n{processor}{spec.snippet}".format(repo=model_name)
    sections.append(
        f"## How to use\n\n`import mage_hf` first (it registers the model classes).\n\n```python\n{code}\n```"
    )
    if extra_text:
        sections.append(extra_text.strip())
    sections.append(f"## Citation\n\n```bibtex\n{CITATION}\n```")

    path = save_dir / "README.md"
    ModelCard(f"---\n{card_data.to_yaml()}\n---\n\n" + "\n\n".join(sections) + "\n").save(path)
    return path


__all__ = ["CARD_KINDS", "CardKind", "write_model_card"]
