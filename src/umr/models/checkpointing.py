"""Gradient checkpointing: recompute each repeated block's activations in backward.

Fine-tuning (``--grad-checkpointing``) keeps only each block's input during the forward pass
and runs the block again in backward, trading about one more forward pass for the memory of
every intermediate activation. :func:`checkpoint_blocks` does it for blocks that are called
through their ``forward`` (transformers' layers, the vision towers, MM-Embed's bidirectional
Mistral); a fast path that calls a block's parts itself checkpoints on its own
(:func:`umr.models.qwen_vl_fast.decode_packed`).
"""

from __future__ import annotations

import functools

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint


def checkpoint_blocks(module: nn.Module) -> int:
    """Wrap the ``forward`` of every member of a ``ModuleList`` of identical blocks in ``module``
    (the layers of an LLM, of a vision tower, of a text encoder); returns how many were wrapped.

    The wrapped forward checkpoints only when gradients are on, so embedding without a graph
    (GradCache's first pass, evaluation) runs as before.
    """
    wrapped = 0
    for child in module.modules():
        if isinstance(child, nn.ModuleList) and len(child) > 1 and len({type(m) for m in child}) == 1:
            for block in child:
                block.forward = functools.partial(_checkpointed, block.forward)
                wrapped += 1
    return wrapped


def _checkpointed(forward, *args, **kwargs):
    if not torch.is_grad_enabled():
        return forward(*args, **kwargs)
    return checkpoint(forward, *args, use_reentrant=False, **kwargs)
