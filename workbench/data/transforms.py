"""Tensor transforms on whole batches: augmentations, and the views a model sees images through.

Augmentations are tiny pure functions on a whole batch (airbench's habit), so no per-sample Python runs
in the training loop. A `View` is how a model sees images (channels, square size, normalisation);
`convert` turns a normalised batch seen one way into the same batch seen another way.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from workbench.errors import DataError

AUGMENTATIONS = ("none", "flip", "crop", "flip+crop")


def batch_flip_lr(x: torch.Tensor, flip: torch.Tensor) -> torch.Tensor:
    """Mirror the images whose `flip` entry is True. x: (B, C, H, W), flip: (B,) bool."""
    return torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)


def batch_crop(x: torch.Tensor, pad: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Random crops of the zero-padded images (each sample its own shift). x: (B, C, H, W)."""
    if pad <= 0:
        return x
    B, C, H, W = x.shape
    padded = torch.nn.functional.pad(x, (pad, pad, pad, pad))  # (B, C, H+2p, W+2p)
    dy = torch.randint(0, 2 * pad + 1, (B,), device=x.device, generator=generator)
    dx = torch.randint(0, 2 * pad + 1, (B,), device=x.device, generator=generator)
    rows = (torch.arange(H, device=x.device)[None] + dy[:, None])  # (B, H)
    cols = (torch.arange(W, device=x.device)[None] + dx[:, None])  # (B, W)
    b = torch.arange(B, device=x.device)[:, None, None, None]
    c = torch.arange(C, device=x.device)[None, :, None, None]
    return padded[b, c, rows[:, None, :, None], cols[:, None, None, :]]


@dataclass(frozen=True)
class View:
    """How a model sees images: channels, square size, and the mean and std it normalises with."""

    channels: int
    size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]


def adapt_pixels(x: torch.Tensor, channels: int, size: int) -> torch.Tensor:
    """[0, 1] pixels (B, C, H, W) with `channels` (grey ↔ colour) at size × size (bilinear, antialiased)."""
    if x.shape[1] != channels:
        if x.shape[1] == 1:
            x = x.expand(-1, channels, -1, -1)
        elif channels == 1:
            x = x.mean(1, keepdim=True)
        else:
            raise DataError(f"cannot turn {x.shape[1]}-channel images into {channels}-channel ones; "
                            "only grey (1) and colour (3) convert into each other")
    if x.shape[-1] != size or x.shape[-2] != size:
        x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return x.contiguous()


def normalise(x: torch.Tensor, mean, std) -> torch.Tensor:
    m = torch.tensor(mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    return (x - m) / s


def convert(x: torch.Tensor, src: View, dst: View) -> torch.Tensor:
    """A normalised batch seen as `src`, seen as `dst` instead (for a teacher with its own view)."""
    if src == dst:
        return x
    pixels = x * torch.tensor(src.std, device=x.device).view(1, -1, 1, 1) + \
        torch.tensor(src.mean, device=x.device).view(1, -1, 1, 1)
    return normalise(adapt_pixels(pixels.clamp(0, 1), dst.channels, dst.size), dst.mean, dst.std)
