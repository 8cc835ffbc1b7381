"""MagePipeline from the installed `mage_hf` package (pip install mage_hf), for
`DiffusionPipeline.from_pretrained(path, custom_pipeline="pipeline_mage", trust_remote_code=True)`."""

from mage_hf import MagePipeline

__all__ = ["MagePipeline"]
