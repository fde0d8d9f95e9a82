"""PyramidNet for 32x32 images (Han, Kim, Kim, "Deep Pyramidal Residual Networks", CVPR 2017),
registered into timm: ``timm.create_model("pyramidnet200_a240", num_classes=100)`` once
``pipeline.models`` is imported.

Built as the authors' PyTorch code (dyhan0920/PyramidNet-PyTorch) and clovaai/CutMix-PyTorch's
``pyramidnet.py`` build it: a 3x3 conv + BN stem of 16 channels; 3 stages of residual units whose
width grows by alpha/N per unit over all N units (unit k has 16 + alpha*k/N channels, rounded);
BN-conv-BN-ReLU-conv-BN basic units or BN-conv1x1-BN-ReLU-conv3x3-BN-ReLU-conv1x1-BN bottleneck
units (4x expansion); identity shortcuts, average-pooled where a stage halves the size and
zero-padded to the branch's channels; then BN-ReLU, global average pooling and a linear
classifier. Parameter names are theirs, so their state_dicts load (after stripping DataParallel's
``module.``).

Each residual branch F(x) may be regularized, with rates growing linearly over depth (unit l of L
gets l/L of the final rate, as the stochastic depth and ShakeDrop papers do):
- ``shakedrop=True``: ShakeDrop (``shakedrop.py``), final drop probability ``shakedrop_prob`` (0.5);
- ``drop_path_rate``: stochastic depth (timm's DropPath: per sample, kept branches scaled by
  1/keep during training instead of scaling by keep at test time as the paper does; same mean);
- ``drop_block_rate``: DropBlock (``dropblock.py``; not timm's, which over-drops small maps) on
  the branch output of every unit in the last two stages (16x16 and 8x8 maps), block size 7, as
  the DropBlock paper applies it to the last two groups (14x14 and 7x7 maps) of ResNet-50; the
  same rate in every unit. A fixed rate: the paper's linear ramp over training is not done here.
ShakeDrop already drops branches (its b ~ Bernoulli), so it excludes ``drop_path_rate``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction

import torch.nn.functional as F
from timm.layers import DropPath, create_classifier
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from torch import Tensor, nn

from .dropblock import DropBlock
from .shakedrop import ShakeDrop

STEM_CHANNELS = 16
# CIFAR statistics as clovaai/CutMix-PyTorch normalizes with ([125.3, 123.0, 113.9] / 255, ...).
CIFAR_MEAN = (125.3 / 255, 123.0 / 255, 113.9 / 255)
CIFAR_STD = (63.0 / 255, 62.1 / 255, 66.7 / 255)


def unit_widths(*, alpha: int, units: int) -> list[int]:
    """Branch widths (bottleneck: before the 4x expansion) of units 1..N: 16 + alpha*k/N, rounded
    half up as the authors' Lua code does (``math.floor(x + 0.5)``), computed exactly."""
    return [math.floor(STEM_CHANNELS + Fraction(alpha) * k / units + Fraction(1, 2)) for k in range(1, units + 1)]


def count_units(depth: int, *, bottleneck: bool) -> int:
    """Residual units N over the 3 stages: depth = 2 + (2 or 3 layers per unit) * N."""
    layers = 3 if bottleneck else 2
    if depth < 2 + 3 * layers or (depth - 2) % (3 * layers):
        raise ValueError(f"PyramidNet: depth must be 2 + {3 * layers}*n for {'bottleneck' if bottleneck else 'basic'}"
                         f" units (n >= 1), got {depth}")
    return (depth - 2) // layers


def pad_channels(shortcut: Tensor, channels: int) -> Tensor:
    """The shortcut with zero channels appended up to ``channels`` (PyramidNet's zero-padded identity)."""
    extra = channels - shortcut.shape[1]
    return F.pad(shortcut, (0, 0, 0, 0, 0, extra)) if extra else shortcut


def conv3x3(in_chs: int, out_chs: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_chs, out_chs, kernel_size=3, stride=stride, padding=1, bias=False)


class PyramidalUnit(nn.Module):
    """A residual unit: x -> pad(shortcut(x)) + residual_drop(drop_block(branch(x)))."""

    expansion = 1

    def __init__(self, *, stride: int, residual_drop: nn.Module, drop_block: nn.Module):
        super().__init__()
        # ceil_mode: the same size as the stride-2 conv of the branch, odd sizes included.
        self.downsample = nn.AvgPool2d(2, stride=2, ceil_mode=True) if stride == 2 else nn.Identity()
        self.drop_block = drop_block
        self.residual_drop = residual_drop

    def branch(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    def forward(self, x: Tensor) -> Tensor:
        out = self.residual_drop(self.drop_block(self.branch(x)))
        return out + pad_channels(self.downsample(x), out.shape[1])


class BasicUnit(PyramidalUnit):
    """BN-conv3x3-BN-ReLU-conv3x3-BN."""

    def __init__(self, in_chs: int, planes: int, *, stride: int, residual_drop: nn.Module, drop_block: nn.Module):
        super().__init__(stride=stride, residual_drop=residual_drop, drop_block=drop_block)
        self.out_chs = planes
        self.bn1, self.conv1 = nn.BatchNorm2d(in_chs), conv3x3(in_chs, planes, stride)
        self.bn2, self.conv2 = nn.BatchNorm2d(planes), conv3x3(planes, planes)
        self.bn3 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)

    def branch(self, x: Tensor) -> Tensor:
        return self.bn3(self.conv2(self.relu(self.bn2(self.conv1(self.bn1(x))))))


class BottleneckUnit(PyramidalUnit):
    """BN-conv1x1-BN-ReLU-conv3x3-BN-ReLU-conv1x1(4x)-BN."""

    expansion = 4

    def __init__(self, in_chs: int, planes: int, *, stride: int, residual_drop: nn.Module, drop_block: nn.Module):
        super().__init__(stride=stride, residual_drop=residual_drop, drop_block=drop_block)
        self.out_chs = planes * self.expansion
        self.bn1 = nn.BatchNorm2d(in_chs)
        self.conv1 = nn.Conv2d(in_chs, planes, kernel_size=1, bias=False)
        self.bn2, self.conv2 = nn.BatchNorm2d(planes), conv3x3(planes, planes, stride)
        self.bn3 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * self.expansion, kernel_size=1, bias=False)
        self.bn4 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)

    def branch(self, x: Tensor) -> Tensor:
        out = self.conv2(self.relu(self.bn2(self.conv1(self.bn1(x)))))
        return self.bn4(self.conv3(self.relu(self.bn3(out))))


@dataclass(frozen=True)
class BranchRegularization:
    """What multiplies each residual branch; rates are those of the last unit (linear over depth)."""

    shakedrop_prob: float | None = None  # ShakeDrop's final drop probability; None: no ShakeDrop
    drop_path_rate: float = 0.0  # stochastic depth's final drop probability
    drop_block_rate: float = 0.0  # DropBlock's rate, the same in every unit of the last two stages
    drop_block_size: int = 7

    def residual_drop(self, depth_fraction: float) -> nn.Module:
        """For the unit at ``depth_fraction`` = l / L."""
        if self.shakedrop_prob is not None:
            return ShakeDrop(self.shakedrop_prob * depth_fraction)
        if self.drop_path_rate > 0:
            return DropPath(self.drop_path_rate * depth_fraction)
        return nn.Identity()

    def drop_block(self, stage: int) -> nn.Module:
        """For a unit of stage 0, 1 or 2."""
        if self.drop_block_rate > 0 and stage >= 1:
            return DropBlock(self.drop_block_rate, block_size=self.drop_block_size)
        return nn.Identity()


def make_stages(*, depth: int, alpha: int, bottleneck: bool, regularization: BranchRegularization) -> list:
    """The 3 stages (nn.Sequential of units) after the 16-channel stem; each but the first halves the size."""
    units = count_units(depth, bottleneck=bottleneck)
    unit_class = BottleneckUnit if bottleneck else BasicUnit
    widths, per_stage, in_chs, stages = unit_widths(alpha=alpha, units=units), units // 3, STEM_CHANNELS, []
    for stage in range(3):
        blocks = []
        for offset in range(per_stage):
            index = stage * per_stage + offset
            blocks.append(unit_class(in_chs, widths[index], stride=2 if stage and not offset else 1,
                                     residual_drop=regularization.residual_drop((index + 1) / units),
                                     drop_block=regularization.drop_block(stage)))
            in_chs = blocks[-1].out_chs
        stages.append(nn.Sequential(*blocks))
    return stages


class PyramidNet(nn.Module):
    """Additive PyramidNet for CIFAR-sized images, with timm's model interface (``forward_features``
    -> the final BN-ReLU map, ``forward_head``, ``get_classifier``, ``reset_classifier``,
    ``feature_info`` per stage)."""

    def __init__(self, depth: int = 110, alpha: int = 48, bottleneck: bool = False, num_classes: int = 100,
                 in_chans: int = 3, global_pool: str = "avg", shakedrop: bool = False, shakedrop_prob: float = 0.5,
                 drop_path_rate: float = 0.0, drop_block_rate: float = 0.0, drop_block_size: int = 7):
        super().__init__()
        if shakedrop and drop_path_rate > 0:
            raise ValueError("PyramidNet: ShakeDrop already drops residual branches; use shakedrop or drop_path_rate")
        self.num_classes, self.in_chans = num_classes, in_chans
        self.conv1 = conv3x3(in_chans, STEM_CHANNELS)
        self.bn1 = nn.BatchNorm2d(STEM_CHANNELS)  # no ReLU here: the first unit starts with BN
        self.feature_info = [dict(num_chs=STEM_CHANNELS, reduction=1, module="bn1")]
        regularization = BranchRegularization(
            shakedrop_prob=shakedrop_prob if shakedrop else None, drop_path_rate=drop_path_rate,
            drop_block_rate=drop_block_rate, drop_block_size=drop_block_size)
        stages = make_stages(depth=depth, alpha=alpha, bottleneck=bottleneck, regularization=regularization)
        for index, stage in enumerate(stages):
            self.add_module(f"layer{index + 1}", stage)
            self.feature_info.append(dict(num_chs=stage[-1].out_chs, reduction=2**index, module=f"layer{index + 1}"))
        self.num_features = self.head_hidden_size = stages[-1][-1].out_chs
        self.bn_final = nn.BatchNorm2d(self.num_features)
        self.relu_final = nn.ReLU(inplace=True)
        self.global_pool, self.fc = create_classifier(self.num_features, num_classes, pool_type=global_pool)
        self.init_weights()

    def init_weights(self) -> None:
        """The authors' initialization: conv N(0, sqrt(2 / (k*k*out))), BN 1 and 0, linear as PyTorch's."""
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                fan_out = module.kernel_size[0] * module.kernel_size[1] * module.out_channels
                nn.init.normal_(module.weight, 0.0, math.sqrt(2.0 / fan_out))
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def get_classifier(self) -> nn.Module:
        return self.fc

    def reset_classifier(self, num_classes: int, global_pool: str = "avg") -> None:
        """A new (re-initialized) classifier of ``num_classes`` outputs (0: none, pooled features)."""
        self.num_classes = num_classes
        self.global_pool, self.fc = create_classifier(self.num_features, num_classes, pool_type=global_pool)

    def forward_features(self, x: Tensor) -> Tensor:
        """The final BN-ReLU feature map (N, num_features, H/4, W/4): what CAM weighs with ``fc``."""
        x = self.bn1(self.conv1(x))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.relu_final(self.bn_final(x))

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        x = self.global_pool(x)
        return x if pre_logits else self.fc(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))


def _cfg(**kwargs) -> dict:
    # No weights to download: pretrained=True needs pretrained_cfg_overlay=dict(file=..., num_classes=K).
    return {"url": "", "num_classes": 100, "input_size": (3, 32, 32), "pool_size": (8, 8), "crop_pct": 1.0,
            "interpolation": "bilinear", "mean": CIFAR_MEAN, "std": CIFAR_STD, "first_conv": "conv1",
            "classifier": "fc", **kwargs}


VARIANTS = {  # name: (depth, alpha, bottleneck)
    "pyramidnet20_a48": (20, 48, False),
    "pyramidnet110_a48": (110, 48, False),
    "pyramidnet110_a84": (110, 84, False),
    "pyramidnet110_a270": (110, 270, False),
    "pyramidnet164_a48": (164, 48, True),
    "pyramidnet164_a270": (164, 270, True),
    "pyramidnet200_a240": (200, 240, True),
    "pyramidnet236_a220": (236, 220, True),
    "pyramidnet272_a200": (272, 200, True),
}
default_cfgs = generate_default_cfgs({name: _cfg() for name in VARIANTS})  # read by register_model


def _create_pyramidnet(variant: str, pretrained: bool, **kwargs) -> PyramidNet:
    depth, alpha, bottleneck = VARIANTS[variant]
    return build_model_with_cfg(PyramidNet, variant, pretrained, feature_cfg=dict(out_indices=(0, 1, 2, 3)),
                                depth=depth, alpha=alpha, bottleneck=bottleneck, **kwargs)


@register_model
def pyramidnet20_a48(pretrained: bool = False, **kwargs) -> PyramidNet:
    """PyramidNet-20, alpha 48, basic units (small: tests and the demo)."""
    return _create_pyramidnet("pyramidnet20_a48", pretrained, **kwargs)


@register_model
def pyramidnet110_a48(pretrained: bool = False, **kwargs) -> PyramidNet:
    """PyramidNet-110, alpha 48, basic units (published: 1.7M parameters)."""
    return _create_pyramidnet("pyramidnet110_a48", pretrained, **kwargs)


@register_model
def pyramidnet110_a84(pretrained: bool = False, **kwargs) -> PyramidNet:
    """PyramidNet-110, alpha 84, basic units (published: 3.8M parameters)."""
    return _create_pyramidnet("pyramidnet110_a84", pretrained, **kwargs)


@register_model
def pyramidnet110_a270(pretrained: bool = False, **kwargs) -> PyramidNet:
    """PyramidNet-110, alpha 270, basic units (published: 28.3M parameters)."""
    return _create_pyramidnet("pyramidnet110_a270", pretrained, **kwargs)


@register_model
def pyramidnet164_a48(pretrained: bool = False, **kwargs) -> PyramidNet:
    """PyramidNet-164, alpha 48, bottleneck units (published: 1.7M parameters)."""
    return _create_pyramidnet("pyramidnet164_a48", pretrained, **kwargs)


@register_model
def pyramidnet164_a270(pretrained: bool = False, **kwargs) -> PyramidNet:
    """PyramidNet-164, alpha 270, bottleneck units (published: 27.0M parameters)."""
    return _create_pyramidnet("pyramidnet164_a270", pretrained, **kwargs)


@register_model
def pyramidnet200_a240(pretrained: bool = False, **kwargs) -> PyramidNet:
    """PyramidNet-200, alpha 240, bottleneck units: the CutMix paper's CIFAR-100 model (26.8M parameters)."""
    return _create_pyramidnet("pyramidnet200_a240", pretrained, **kwargs)


@register_model
def pyramidnet236_a220(pretrained: bool = False, **kwargs) -> PyramidNet:
    """PyramidNet-236, alpha 220, bottleneck units (published: 26.8M parameters)."""
    return _create_pyramidnet("pyramidnet236_a220", pretrained, **kwargs)


@register_model
def pyramidnet272_a200(pretrained: bool = False, **kwargs) -> PyramidNet:
    """PyramidNet-272, alpha 200, bottleneck units (published: 26.0M parameters)."""
    return _create_pyramidnet("pyramidnet272_a200", pretrained, **kwargs)
