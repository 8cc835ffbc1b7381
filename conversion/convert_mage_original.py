"""Convert the original MAGE release (github.com/LTH14/mage) to `mage_hf` folders; same as `mage-hf convert`.

Released ViT-B (pretraining; the VQGAN is inside the checkpoint, or take it from its own file):

    python conversion/convert_mage_original.py --checkpoint mage-vitb-1600.pth \
        --vqgan-checkpoint vqgan_jax_strongaug.ckpt --output-dir mage-vitb

Released ViT-L (head counts are not stored in checkpoints: pass the size):

    python conversion/convert_mage_original.py --checkpoint mage-vitl-1600.pth --model-size vit-l \
        --output-dir mage-vitl

Fine-tuned classifier (ViT-B), and the VQGAN tokenizer alone:

    python conversion/convert_mage_original.py --checkpoint mage-vitb-ft.pth --output-dir mage-vitb-ft
    python conversion/convert_mage_original.py --vqgan-checkpoint vqgan_jax_strongaug.ckpt --output-dir mage-vqgan

Load the results with `import mage_hf` then `MageForMaskedImageModeling` / `AutoModel`,
`AutoModelForImageClassification` or `MageVQModel.from_pretrained(dir)`. See `--help` for every flag.
"""

import sys

from mage_hf.commands import main

if __name__ == "__main__":
    sys.exit(main(["convert", *sys.argv[1:]]))
