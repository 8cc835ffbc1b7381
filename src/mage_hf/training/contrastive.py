"""MAGE-C's contrastive objective: SimCLR's InfoNCE (NT-Xent) over two views of each image, with the negatives of
every process (as SimCLR trains on many devices).

For a global batch of G images, each of the 2G views is an anchor whose positive is the other view of its image and
whose negatives are the remaining 2G - 2 views. Each process computes the loss of its own 2B anchors against the
gathered 2G candidates; gathering keeps the gradient (`torch.distributed.nn.functional.all_gather`), so the mean over
processes, the loss and its gradient equal those of one process holding the whole batch.
"""

import torch
import torch.nn.functional as F
from torch import distributed


def gather_with_grad(embeds: torch.Tensor) -> tuple[torch.Tensor, int]:
    """(B, P) local rows -> ((world * B, P) rows of every process in rank order, offset of ours). Outside a
    multi-process run, the input itself and offset 0."""
    if not (distributed.is_available() and distributed.is_initialized()) or distributed.get_world_size() == 1:
        return embeds, 0
    import torch.distributed.nn.functional as distributed_nn

    gathered = distributed_nn.all_gather(embeds.contiguous())
    return torch.cat(gathered), distributed.get_rank() * embeds.shape[0]


def info_nce_loss(embeds_a: torch.Tensor, embeds_b: torch.Tensor, temperature: float) -> torch.Tensor:
    """SimCLR's NT-Xent loss. `embeds_a`, `embeds_b`: (B, P) L2-normalised embeddings of the two views of the same B
    images (row i of both is image i). Returns the mean over the 2B local anchors of
    `-log softmax(sim / temperature)[positive]`, against all views of the global batch but the anchor itself.

    For an anchor whose positive has similarity s and whose negatives have similarities c_k this is
    `log(1 + sum_k exp((c_k - s) / temperature))`: identical views (s = 1) give its lower bound for those negatives,
    `log(1 + (2G - 2) exp(-1 / temperature))` when the negatives are orthogonal.
    """
    if embeds_a.shape != embeds_b.shape or embeds_a.ndim != 2:
        raise ValueError(
            f"`embeds_a` and `embeds_b` must both be (batch, dim), got {tuple(embeds_a.shape)} and "
            f"{tuple(embeds_b.shape)}"
        )
    if not temperature > 0:
        raise ValueError(f"`temperature` must be > 0, got {temperature}")
    batch = embeds_a.shape[0]
    all_a, offset = gather_with_grad(embeds_a)
    all_b, _ = gather_with_grad(embeds_b)
    global_batch = all_a.shape[0]
    anchors = torch.cat([embeds_a, embeds_b]).float()  # (2B, P)
    candidates = torch.cat([all_a, all_b]).float()  # (2G, P): view a of every image, then view b
    logits = anchors @ candidates.t() / temperature  # (2B, 2G)
    own = offset + torch.arange(batch, device=logits.device)
    self_index = torch.cat([own, own + global_batch])
    positive_index = torch.cat([own + global_batch, own])
    rows = torch.arange(2 * batch, device=logits.device)
    logits = logits.index_put((rows, self_index), torch.tensor(float("-inf"), device=logits.device))
    return F.cross_entropy(logits, positive_index)


__all__ = ["gather_with_grad", "info_nce_loss"]
