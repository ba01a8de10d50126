"""The multi-task networks: an MLP for features, a small multi-task UNet for images.

Both share one trunk across tasks (hard parameter sharing, paper section 4.1) and end in one head
per task. For images, global tasks (classification, regression) read the bottleneck, dense tasks
(segmentation, dense regression) read the last decoder layer, as in the paper's Multi-task UNet.
The ILT parameters are not part of the model (see :mod:`ilt_audit.ilt_params`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ilt_audit.card import TaskSpec


@dataclass(frozen=True)
class ModelConfig:
    hidden: int = 128  # MLP width
    depth: int = 2  # MLP hidden layers
    width: int = 16  # UNet channels at full resolution; doubled at each of the 3 levels


class MLP(nn.Module):
    """Features in, one linear head per task out."""

    def __init__(self, in_features: int, heads: dict[str, int], config: ModelConfig) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        width = in_features
        for _ in range(config.depth):
            layers += [nn.Linear(width, config.hidden), nn.ReLU()]
            width = config.hidden
        self.trunk = nn.Sequential(*layers)
        self.heads = nn.ModuleDict({name: nn.Linear(width, out) for name, out in heads.items()})

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        h = self.trunk(x)  # (B, hidden)
        return {name: head(h) for name, head in self.heads.items()}  # name -> (B, out)


def _block(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
        nn.Conv2d(c_out, c_out, 3, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    )


class MultiTaskUNet(nn.Module):
    """A three-level UNet: global heads from the bottleneck, dense heads from the decoder."""

    def __init__(self, heads: dict[str, int], dense: set[str], config: ModelConfig) -> None:
        super().__init__()
        w = config.width
        self.enc = nn.ModuleList([_block(3, w), _block(w, 2 * w), _block(2 * w, 4 * w)])
        self.bottleneck = _block(4 * w, 8 * w)
        self.pool = nn.MaxPool2d(2)
        self.up = nn.ModuleList(
            [nn.ConvTranspose2d(c, c // 2, 2, stride=2) for c in (8 * w, 4 * w, 2 * w)]
        )
        self.dec = nn.ModuleList([_block(8 * w, 4 * w), _block(4 * w, 2 * w), _block(2 * w, w)])
        self.dense = dense
        self.heads = nn.ModuleDict()
        for name, out in heads.items():
            if name in dense:
                self.heads[name] = nn.Conv2d(w, out, 1)
            else:
                self.heads[name] = nn.Sequential(
                    nn.Linear(8 * w + w, 4 * w),
                    nn.ReLU(inplace=True),
                    nn.Linear(4 * w, out),
                )

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        height, width = x.shape[-2:]
        pad_h, pad_w = (-height) % 8, (-width) % 8  # three poolings need sides divisible by 8
        h = (
            F.pad(x, (0, pad_w, 0, pad_h), mode="replicate") if pad_h or pad_w else x
        )  # (B, 3, H, W)
        skips = []
        for enc in self.enc:
            h = enc(h)
            skips.append(h)
            h = self.pool(h)
        bottleneck = self.bottleneck(h)  # (B, 8w, H/8, W/8)
        h = bottleneck
        for up, dec, skip in zip(self.up, self.dec, reversed(skips), strict=True):
            h = dec(torch.cat([up(h), skip], dim=1))
        pooled = torch.cat(
            [bottleneck.mean(dim=(2, 3)), h[..., :height, :width].amax(dim=(2, 3))], dim=1
        )  # (B, 8w + w): the bottleneck's context and the decoder's strongest local evidence
        out: dict[str, torch.Tensor] = {}
        for name, head in self.heads.items():
            if name in self.dense:
                out[name] = head(h)[..., :height, :width]  # (B, C, H, W)
            else:
                out[name] = head(pooled)  # (B, out)
        return out


def build_model(
    input_type: str,
    in_features: int,
    tasks: tuple[TaskSpec, ...],
    heads: dict[str, int],
    config: ModelConfig,
) -> nn.Module:
    """The network the input type calls for, with one head per task sized by ``heads``."""
    if input_type == "features":
        return MLP(in_features, heads, config)
    return MultiTaskUNet(heads, {t.name for t in tasks if t.dense}, config)
