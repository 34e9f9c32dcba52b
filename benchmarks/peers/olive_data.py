"""Olive user script (imported by Olive itself, inside .venv-olive): the benchmark's .npz as Olive data.

Registers `hwsearch_npz` (a dataset of ({"input": image}, label) pairs from one split of the .npz that
benchmarks/bench_peers.py writes) and `argmax_logits` (post-process: Olive's default passes raw logits to
torchmetrics cast to int, which truncates them and breaks the arg-max, so top-1 needs the class index).
"""

from __future__ import annotations

import numpy as np
import torch
from olive.data.registry import Registry


class NpzSplit(torch.utils.data.Dataset):
    def __init__(self, data_path: str, split: str, limit: int | None = None) -> None:
        with np.load(data_path) as npz:
            self.x = torch.from_numpy(np.ascontiguousarray(npz[f"{split}_x"][:limit], dtype=np.float32))
            key = f"{split}_y"
            # calibration images carry no labels; Olive still wants a (data, label) pair
            y = npz[key][:limit] if key in npz else np.zeros(len(self.x), dtype=np.int64)
            self.y = torch.from_numpy(y.astype(np.int64))

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        return {"input": self.x[i]}, self.y[i]


@Registry.register_dataset()
def hwsearch_npz(data_path: str, split: str, limit: int | None = None) -> NpzSplit:
    return NpzSplit(data_path, split, limit)


@Registry.register_post_process()
def argmax_logits(output_data: torch.Tensor, **kwargs: object) -> torch.Tensor:
    return output_data.argmax(dim=-1)
