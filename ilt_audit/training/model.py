"""The multi-task networks: an MLP for features, a small multi-task UNet or a torchvision backbone
for images.

Each shares one trunk across tasks (hard parameter sharing, paper section 4.1) and ends in one head
per task. For images, global tasks (classification, regression) read the trunk's pooled features,
dense tasks (segmentation, dense regression) a full-resolution map: the last decoder layer of the
small UNet, as in the paper's Multi-task UNet, or a light FPN decoder over a backbone's stages.
The ILT parameters are not part of the model (see :mod:`ilt_audit.training.ilt_params`): the method is the
same whatever the network.

Example:
    >>> config = ModelConfig(name="resnet18", weights="imagenet")  # doctest: +SKIP
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch
import torch.nn.functional as F
from torch import nn

from ilt_audit.dataset.card import TaskSpec
from ilt_audit.errors import OptionError
from ilt_audit.internal.console import err_console


@dataclass(frozen=True)
class ModelConfig:
    name: str = "small"  # small (MLP or UNet) | resnet18 | resnet50 | convnext_tiny
    weights: str | None = None  # a backbone's starting weights: a state dict file, or "imagenet"
    hidden: int = 128  # MLP width
    depth: int = 2  # MLP hidden layers
    width: int = 16  # UNet channels at full resolution; doubled at each of the 3 levels
    offline: bool = False  # weights="imagenet" from torchvision's cache only, never downloaded


@dataclass(frozen=True)
class BackboneSpec:
    """How to take four feature maps (strides 4, 8, 16, 32) out of a torchvision classifier."""

    stages: tuple[str, str, str, str]  # the modules whose outputs are the feature maps
    channels: tuple[int, int, int, int]  # their channels
    classifier: str  # key prefix of the ImageNet classifier, which the network leaves out


BACKBONES = {
    "resnet18": BackboneSpec(("layer1", "layer2", "layer3", "layer4"), (64, 128, 256, 512), "fc."),
    "resnet50": BackboneSpec(
        ("layer1", "layer2", "layer3", "layer4"), (256, 512, 1024, 2048), "fc."
    ),
    "convnext_tiny": BackboneSpec(
        ("features.1", "features.3", "features.5", "features.7"), (96, 192, 384, 768), "classifier."
    ),
}
MODELS = ("small", *BACKBONES)
FPN_WIDTH = 64  # channels of the dense decoder, whatever the backbone
MIN_SIDE = (
    32  # a backbone's total stride: smaller images are upsampled to it, so stage 4 has a cell
)
IMAGENET = "imagenet"
HASH_IN_NAME = re.compile(r"-([0-9a-f]{8,})\.")  # torch.hub's check_hash: name-<sha256 prefix>.ext


def check_model(config: ModelConfig) -> ModelConfig:
    """Reject an unknown ``--model`` and ``--weights`` without a backbone to load them into."""
    if config.name not in MODELS:
        raise OptionError(f"unknown model {config.name!r}; choose one of {', '.join(MODELS)}")
    if config.weights is not None and config.name == "small":
        raise OptionError(
            f"--weights {config.weights}: the small network has no pretrained weights; "
            f"choose a backbone with --model ({', '.join(BACKBONES)})"
        )
    return config


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


class FPN(nn.Module):
    """A light feature-pyramid decoder: the backbone's four stages to one map at stride 4.

    1x1 lateral convolutions bring every stage to ``width`` channels; from the coarsest stage down,
    each level is upsampled and added to the next finer one; a 3x3 convolution smooths the sum.
    """

    def __init__(self, channels: tuple[int, ...], width: int) -> None:
        super().__init__()
        self.lateral = nn.ModuleList([nn.Conv2d(c, width, 1) for c in channels])
        self.smooth = nn.Sequential(
            nn.Conv2d(width, width, 3, padding=1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
        )

    def forward(self, stages: list[torch.Tensor]) -> torch.Tensor:
        h = self.lateral[-1](stages[-1])  # (B, width, H/32, W/32)
        for lateral, stage in zip(reversed(self.lateral[:-1]), reversed(stages[:-1]), strict=True):
            h = lateral(stage) + F.interpolate(h, size=stage.shape[-2:], mode="nearest")
        return self.smooth(h)  # (B, width, H/4, W/4)


class Backbone(nn.Module):
    """A torchvision backbone: global heads on its pooled last stage, dense heads on an FPN.

    ``body`` holds the backbone's modules under torchvision's own names (its state dict is the
    ImageNet file's without the classifier), so pretrained weights load as they are.
    """

    def __init__(self, name: str, heads: dict[str, int], dense: set[str]) -> None:
        super().__init__()
        import torchvision
        from torchvision.models.feature_extraction import create_feature_extractor

        spec = BACKBONES[name]
        classifier = getattr(torchvision.models, name)(weights=None)  # never downloads
        self.body = create_feature_extractor(classifier, {s: s for s in spec.stages})
        self.stages = spec.stages
        self.dense = dense
        self.fpn = FPN(spec.channels, FPN_WIDTH) if dense else None  # no unused parameters (DDP)
        self.heads = nn.ModuleDict(
            {
                task: nn.Conv2d(FPN_WIDTH, out, 1)
                if task in dense
                else nn.Linear(spec.channels[-1], out)
                for task, out in heads.items()
            }
        )

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        height, width = x.shape[-2:]
        if min(height, width) < MIN_SIDE:
            scale = MIN_SIDE / min(height, width)
            size = (math.ceil(height * scale), math.ceil(width * scale))
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
        if x.is_cuda:  # the model is channels-last on CUDA (training.py): convolutions run NHWC
            x = x.contiguous(memory_format=torch.channels_last)
        features = self.body(x)
        stages = [features[s] for s in self.stages]  # (B, C_i, H/2^(i+2), W/2^(i+2)), i = 0..3
        pooled = stages[-1].mean(dim=(2, 3))  # (B, C_4)
        dense = self.fpn(stages) if self.fpn is not None else None  # (B, FPN_WIDTH, H/4, W/4)
        out: dict[str, torch.Tensor] = {}
        for name, head in self.heads.items():
            if name in self.dense:
                assert dense is not None
                out[name] = F.interpolate(
                    head(dense), size=(height, width), mode="bilinear", align_corners=False
                )  # (B, C, H, W) at the input's own size
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
    """The network the input type and ``config.name`` call for, one head per task sized by
    ``heads``. Built without pretrained weights (see :func:`pretrained_state`)."""
    check_model(config)
    if input_type == "features":
        if config.name != "small":
            raise OptionError(
                f"--model {config.name} needs images; a features card trains the small network "
                "(an MLP): leave --model out"
            )
        return MLP(in_features, heads, config)
    dense = {t.name for t in tasks if t.dense}
    if config.name == "small":
        return MultiTaskUNet(heads, dense, config)
    return Backbone(config.name, heads, dense)


def describe(input_type: str, config: ModelConfig) -> str:
    """The network's name, as config.json and the report show it."""
    if input_type == "features":
        return "MLP"
    return "MultiTaskUNet" if config.name == "small" else f"{config.name} + FPN"


def imagenet_file(name: str) -> tuple[Path, str]:
    """Where torchvision keeps the ImageNet weights of backbone ``name``
    (``$TORCH_HOME/hub/checkpoints``), and the URL it downloads them from."""
    import torchvision

    url = torchvision.models.get_model_weights(name).DEFAULT.url
    return Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(url).path).name, url


def _reason(exc: Exception) -> str:
    """An exception's first line, or its type when it has no message."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _imagenet_weights(name: str, *, offline: bool) -> Path:
    """The file of :func:`imagenet_file`, downloaded into torchvision's cache unless it is there.

    The download is torch.hub's, as torchvision's own ``weights=`` makes it: to a temporary file
    moved onto the cached name only when complete and its SHA-256 starts with the digits the name
    carries, so a failed or corrupted download never becomes the cached file.
    """
    path, url = imagenet_file(name)
    if path.is_file():
        return path
    elsewhere = f"on a machine with a network, download {url} and put it at {path}"
    if offline:
        raise OptionError(
            f"--weights imagenet: torchvision's ImageNet weights for {name} are not in its cache, "
            f"and --offline (or ILT_AUDIT_OFFLINE=1) forbids downloading them; {elsewhere}"
        )
    digits = HASH_IN_NAME.search(path.name)
    assert digits is not None, f"{url} does not follow torch.hub's naming"
    err_console.print(
        f"Downloading torchvision's ImageNet weights for {name} (once): {url} to {path}",
        highlight=False,
        markup=False,
        soft_wrap=True,
    )
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.hub.download_url_to_file(
            url, str(path), digits.group(1), progress=err_console.is_terminal
        )
    except Exception as exc:  # no network, an HTTP error, a hash mismatch, a full disk
        raise OptionError(
            f"--weights imagenet: downloading {url} failed: {_reason(exc)}; {elsewhere}, "
            "then train with --offline"
        ) from None
    return path


def pretrained_state(config: ModelConfig) -> dict[str, torch.Tensor] | None:
    """The starting weights ``config.weights`` names, checked against the backbone's modules: a
    state dict for :func:`load_pretrained`, or None when there are none.

    A file is read with ``weights_only=True``. ``imagenet`` is torchvision's file in its cache
    (``$TORCH_HOME/hub/checkpoints``), downloaded there once, hash checked, when it is missing;
    with ``config.offline`` a missing file is an :class:`OptionError` naming the path to put it
    at and the URL to fetch it from. The ImageNet classifier's keys, when present, are left out;
    any other missing, unexpected or misshapen key is an :class:`OptionError` naming the file and
    the first such key.

    Example:
        >>> state = pretrained_state(ModelConfig("resnet18", "imagenet"))  # doctest: +SKIP
    """
    if config.weights is None:
        return None
    if config.weights == IMAGENET:
        path = _imagenet_weights(config.name, offline=config.offline)
    else:
        path = Path(config.weights)
        if not path.is_file():
            raise OptionError(f"--weights {path}: no such file")
    try:
        raw: Any = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a pickle of arbitrary objects, a truncated or foreign file
        raise OptionError(
            f"--weights {path}: not a state dict that loads with weights_only=True: {_reason(exc)}"
        ) from None
    if not isinstance(raw, dict) or not all(isinstance(v, torch.Tensor) for v in raw.values()):
        raise OptionError(f"--weights {path}: not a state dict (names to tensors)")
    classifier = BACKBONES[config.name].classifier
    state = {k: v for k, v in raw.items() if not k.startswith(classifier)}
    expected = Backbone(config.name, {}, set()).body.state_dict()
    for key, tensor in expected.items():
        if key not in state:
            raise OptionError(f"--weights {path}: no {key!r}, which --model {config.name} needs")
        if state[key].shape != tensor.shape:
            raise OptionError(
                f"--weights {path}: {key!r} has shape {tuple(state[key].shape)}, --model "
                f"{config.name} needs {tuple(tensor.shape)}"
            )
    unexpected = [k for k in state if k not in expected]
    if unexpected:
        raise OptionError(
            f"--weights {path}: {unexpected[0]!r} is not a parameter of --model {config.name}"
        )
    return state


def load_pretrained(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Copy the weights :func:`pretrained_state` returned into a backbone's body."""
    assert isinstance(model, Backbone)
    model.body.load_state_dict(state)
