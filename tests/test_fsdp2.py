"""FSDP2 (torch's per-parameter FSDP) for pretraining, on 2 CPU processes with gloo.

accelerate enables FSDP only with an accelerator, so the test drives accelerate's own FSDP2 preparation
(`accelerate.utils.fsdp_utils.fsdp2_prepare_model`, what `accelerate launch --config_file
configs/accelerate/fsdp2_vit_l.yaml` runs) directly: every `MageLayer` its own unit, the tied word embeddings / MLM
projection and the final norm one unit (shared weights must live in one FSDP group), the rest in the root. Two
AdamW steps on the halves of a batch give the weights of one process training on the whole batch."""

import types

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from mage_hf import MageConfig, MageForMaskedImageModeling

STEPS, BATCH = 2, 4


def _config() -> MageConfig:
    return MageConfig.from_preset("tiny", hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)


def _model() -> MageForMaskedImageModeling:
    torch.manual_seed(0)
    model = MageForMaskedImageModeling(_config())
    model.mage.vqgan.requires_grad_(False)
    return model


def _batch():
    pixels = torch.rand(BATCH, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    masked, dropped = _model().sample_masks(BATCH, torch.Generator().manual_seed(2))
    return pixels, masked, dropped


def _train(model, rows: slice) -> None:
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    pixels, masked, dropped = _batch()
    for _ in range(STEPS):
        model(pixel_values=pixels[rows], bool_masked_pos=masked[rows], bool_dropped_pos=dropped[rows]).loss.backward()
        optimizer.step()
        optimizer.zero_grad()


def _worker(rank: int, init_file: str, out_file: str) -> None:
    from accelerate.utils import FullyShardedDataParallelPlugin
    from accelerate.utils.fsdp_utils import fsdp2_prepare_model
    from torch.distributed.fsdp import FSDPModule

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    plugin = FullyShardedDataParallelPlugin(
        fsdp_version=2, auto_wrap_policy="transformer_based_wrap", transformer_cls_names_to_wrap=["MageLayer"]
    )
    accelerator = types.SimpleNamespace(  # the attributes fsdp2_prepare_model reads
        state=types.SimpleNamespace(fsdp_plugin=plugin), torch_device_mesh=None, parallelism_config=None,
        device=torch.device("cpu"), is_main_process=rank == 0, mixed_precision="no",
    )
    model = fsdp2_prepare_model(accelerator, _model())
    units = sorted(name for name, module in model.named_modules() if isinstance(module, FSDPModule))
    half = BATCH // 2
    _train(model, slice(rank * half, (rank + 1) * half))
    state = {k: (v.full_tensor() if hasattr(v, "full_tensor") else v).detach() for k, v in model.state_dict().items()}
    if rank == 0:
        torch.save({"state": state, "units": units}, out_file)
    dist.destroy_process_group()


def test_fsdp2_pretraining_matches_one_process(tmp_path):
    out_file = tmp_path / "sharded.pt"
    mp.spawn(_worker, args=(str(tmp_path / "init"), str(out_file)), nprocs=2, join=True)
    result = torch.load(out_file)
    assert "mage.embeddings.word_embeddings" in result["units"] and "mage.layers.0" in result["units"]
    reference = _model()
    _train(reference, slice(0, BATCH))
    for name, tensor in reference.state_dict().items():
        assert (result["state"][name] - tensor).abs().max() <= 1e-4, name
