"""BatchNorm re-estimation: fresh running statistics for a model whose channels changed (pruning), no training.

Pruning a layer shifts the distribution of everything after it, while each BatchNorm keeps the teacher's
statistics; re-estimating them on a few training batches (adaptive BatchNorm, as in EagleEye, Li et al. 2020)
scores a pruned model without training. Measured against one-epoch distillation of each single-unit pruning
(default space, local-1core, one seed): on Fashion-MNIST it ranked the variants better than the untouched
statistics (Spearman 0.72 vs 0.68 over 23 distinct variants) and its drops were nearer the trained ones in
size (at most 32 points vs 77; trained at most 2); on digits (270 val images) slightly worse, within noise
(0.79 vs 0.82 over 13).
"""

from __future__ import annotations

import torch
from torch import nn

from search.tasks.inputs import call, count, rows, to_torch


def recalibrate_bn(model: nn.Module, inputs, batch_size: int = 128) -> nn.Module:
    """Re-estimate every BatchNorm's running statistics on `inputs`, in place; nothing else changes (dropout stays
    off, no gradient). With no inputs the statistics are reset: the caller passes some."""
    bns = {m: m.momentum for m in model.eval().modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)}
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # a cumulative average, not an exponential one
        m.train()
    x = to_torch(inputs)
    with torch.no_grad():
        for i in range(0, count(x), batch_size):
            call(model, rows(x, slice(i, i + batch_size)))
    for m, momentum in bns.items():
        m.momentum = momentum
    return model.eval()
