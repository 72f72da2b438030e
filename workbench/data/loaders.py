"""Batches for the training loop: slices of a seeded permutation of tensors that sit on the device."""

from __future__ import annotations

import torch

from workbench.data.transforms import AUGMENTATIONS, batch_crop, batch_flip_lr


class BatchLoader:
    """Batches of (x, y, idx, flip) drawn from tensors that already sit on the device.

    Each epoch is one random permutation of `indices` cut into slices; with `steps`
    set, the permutation repeats until that many batches are drawn (so a small
    labelled subset can be given the same number of steps as the full set).
    `idx` are positions in the full split, for looking up cached teacher logits;
    `flip` says which samples were mirrored (None when flipping is off).
    """

    def __init__(self, x: torch.Tensor, y: torch.Tensor, batch_size: int, *, augment: str = "none",
                 crop_pad: int = 2, indices: torch.Tensor | None = None, steps: int | None = None,
                 drop_last: bool = True, seed: int = 0, shard: tuple[int, int] = (0, 1)):
        if augment not in AUGMENTATIONS:
            raise ValueError(f"augment must be one of {AUGMENTATIONS}, got {augment!r}")
        self.x, self.y = x, y
        self.indices = (torch.arange(len(x), device=x.device) if indices is None
                        else indices.to(x.device))
        self.batch_size = min(batch_size, len(self.indices))
        self.flip = "flip" in augment
        self.crop_pad = crop_pad if "crop" in augment else 0
        self.drop_last = drop_last
        self.steps = steps
        self.generator = torch.Generator(device=x.device)
        self.generator.manual_seed(seed)
        self.rank, self.world = shard  # data parallel: every rank draws the same batches and keeps its slice

    def __len__(self) -> int:
        if self.steps is not None:
            return self.steps
        n = len(self.indices)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __iter__(self):
        n, bs = len(self.indices), self.batch_size
        reps = 1 if self.steps is None else -(-self.steps * bs // n)  # whole permutations needed
        perms = [torch.randperm(n, device=self.x.device, generator=self.generator) for _ in range(reps)]
        order = self.indices[torch.cat(perms)]  # (reps * n,)
        part = bs // self.world
        for i in range(len(self)):
            idx = order[i * bs:(i + 1) * bs]
            flip = torch.rand(len(idx), device=idx.device, generator=self.generator) < 0.5 if self.flip else None
            if self.world > 1:  # this rank's slice of the global batch
                idx = idx[self.rank * part:(self.rank + 1) * part]
                flip = flip[self.rank * part:(self.rank + 1) * part] if flip is not None else None
            x = self.x[idx]
            if flip is not None:
                x = batch_flip_lr(x, flip)
            if self.crop_pad:
                x = batch_crop(x, self.crop_pad, self.generator)
            yield x, self.y[idx], idx, flip
