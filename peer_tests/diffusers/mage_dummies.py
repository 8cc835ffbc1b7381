"""Tiny MagePipeline components and inputs shared by the MAGE pipeline tests (copied by peer_tests/run.py to
`.peer/diffusers/tests/pipelines/mage/`).

The components mirror aMUSEd's dummy pipeline: a VQ model with a small codebook, a one-layer token transformer
and the masked-token scheduler. 8 x 8 pixel images, a 2-level VQGAN (downsampling 2) -> 4 x 4 = 16 image tokens.
"""

import torch

from mage_hf import MageConfig, MageForMaskedImageModeling, MageScheduler, MageVQModel

IMAGE_SIZE = 8
NUM_IMAGE_TOKENS = 16
CODEBOOK_SIZE = 32


def get_mage_dummy_components(num_condition_classes=0):
    config = MageConfig(
        image_size=IMAGE_SIZE,
        codebook_size=CODEBOOK_SIZE,
        num_class_slots=8,
        num_condition_classes=num_condition_classes,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        decoder_hidden_size=16,
        decoder_num_hidden_layers=1,
        decoder_num_attention_heads=2,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        max_position_embeddings=1 + NUM_IMAGE_TOKENS,
        include_vq_tokenizer=False,
        vq_config={
            "block_out_channels": [8, 16],
            "layers_per_block": 1,
            "latent_channels": 8,
            "vq_embed_dim": 8,
            "norm_num_groups": 8,
        },
    )
    if num_condition_classes:
        config.id2label = {i: f"class_{i}" for i in range(num_condition_classes)}
        config.label2id = {name: i for i, name in config.id2label.items()}
    torch.manual_seed(0)
    transformer = MageForMaskedImageModeling(config).eval()
    torch.manual_seed(0)
    vqvae = MageVQModel(**config.vq_config).eval()
    scheduler = MageScheduler(mask_token_id=config.mask_token_id)
    return {"vqvae": vqvae, "transformer": transformer, "scheduler": scheduler}


def make_generator(device, seed):
    if str(device).startswith("mps"):
        return torch.manual_seed(seed)
    return torch.Generator(device=device).manual_seed(seed)


def dummy_image(device):
    return torch.full((1, 3, IMAGE_SIZE, IMAGE_SIZE), 1.0, dtype=torch.float32, device=device)


def dummy_mask_image(device):
    mask_image = torch.full((1, 1, IMAGE_SIZE, IMAGE_SIZE), 1.0, dtype=torch.float32, device=device)
    mask_image[0, 0, 0, 0] = 0
    mask_image[0, 0, 0, 1] = 0
    return mask_image
