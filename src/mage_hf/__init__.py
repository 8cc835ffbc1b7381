"""mage_hf: MAGE (MAsked Generative Encoder, Li et al., CVPR 2023) for transformers, diffusers and accelerate.

Importing the package registers `MageConfig` ("mage") and its models with the transformers Auto classes, and
`MagePipeline` / `MageScheduler` / `MageVQModel` under the `diffusers` namespace, where
`DiffusionPipeline.from_pretrained(folder)` looks up a folder's `_class_name`.
"""

# diffusers loads a `["mage_hf", "<Class>"]` component of model_index.json by finding its base class (ModelMixin,
# PreTrainedModel, SchedulerMixin) as an attribute of the library `mage_hf`: so they are imported here too.
import diffusers
from diffusers import ModelMixin, SchedulerMixin  # noqa: F401
from transformers import (
    AutoConfig,
    AutoImageProcessor,
    AutoModel,
    AutoModelForImageClassification,
    AutoModelForMaskedImageModeling,
    AutoModelForPreTraining,
)
from transformers import PreTrainedModel  # noqa: F401

from .configuration_mage import MAGE_PRESETS, MageConfig
from .default_model import DEFAULT_MODEL, DEFAULT_MODEL_NAME, DEFAULT_PIPELINE, load_default_pipeline
from .modeling_mage import (
    MageForImageClassification,
    MageForMaskedImageModeling,
    MageImageClassifierOutput,
    MageMaskedImageModelingOutput,
    MageModel,
    MagePreTrainedModel,
)
from .image_processing_mage import MageImageProcessor, MageImageProcessorTorch
from .modeling_vqgan import MageVQModel
from .pipeline_mage import MagePipeline
from .scheduling_mage import MageScheduler, MageSchedulerOutput

__version__ = "0.1.0"

AutoConfig.register("mage", MageConfig, exist_ok=True)
AutoModel.register(MageConfig, MageModel, exist_ok=True)
AutoModelForImageClassification.register(MageConfig, MageForImageClassification, exist_ok=True)
AutoModelForMaskedImageModeling.register(MageConfig, MageForMaskedImageModeling, exist_ok=True)
AutoModelForPreTraining.register(MageConfig, MageForMaskedImageModeling, exist_ok=True)

# diffusers has no registry for third-party pipelines: `DiffusionPipeline.from_pretrained` resolves
# `model_index.json`'s `_class_name` as an attribute of the diffusers module, and `SchedulerMixin.compatibles`
# resolves class names the same way.
for _component in (MagePipeline, MageScheduler, MageVQModel):
    if not hasattr(diffusers, _component.__name__):
        setattr(diffusers, _component.__name__, _component)
# The fast backend (`backend="torchvision"`) is MageImageProcessorTorch: the same recipe in torch ops, no torchvision.
AutoImageProcessor.register(
    MageConfig, image_processor_classes={"pil": MageImageProcessor, "torchvision": MageImageProcessorTorch},
    exist_ok=True,
)

__all__ = [
    "DEFAULT_MODEL",
    "DEFAULT_MODEL_NAME",
    "DEFAULT_PIPELINE",
    "MAGE_PRESETS",
    "MageConfig",
    "MageForImageClassification",
    "MageForMaskedImageModeling",
    "MageImageClassifierOutput",
    "MageImageProcessor",
    "MageImageProcessorTorch",
    "MageMaskedImageModelingOutput",
    "MageModel",
    "MagePipeline",
    "MagePreTrainedModel",
    "MageScheduler",
    "MageSchedulerOutput",
    "MageVQModel",
    "load_default_pipeline",
]
