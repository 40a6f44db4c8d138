"""An independent re-implementation of the official zero-shot ResNet-101 network (lang-seg's LSegRNNetZS).

Written from the architecture description in plain torch (no torchvision, nothing from lseg): an
ImageNet ResNet-101 (v1.5: stride on the 3x3 convolution, 1x1 projection shortcut with BatchNorm on
each stage's first block; stages of 3, 4, 23, 3 bottlenecks) whose stages are registered with the
official names: ``pretrained.layer1 = Sequential(conv1, bn1, relu, maxpool, layer1)``,
``pretrained.layer2..4``. Decoder, head, CLIP text side and logits are those of
reference_lseg.RefDPTNet. The official network sees images normalised with ImageNet statistics.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from reference_lseg import SMOKE, RefDPTNet, Sizes, randomize

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
RN101_BLOCKS = (3, 4, 23, 3)


class RefBottleneck(nn.Module):
    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int) -> None:
        super().__init__()
        out = planes * self.expansion
        self.conv1, self.bn1 = nn.Conv2d(inplanes, planes, 1, bias=False), nn.BatchNorm2d(planes)
        self.conv2, self.bn2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False), nn.BatchNorm2d(planes)
        self.conv3, self.bn3 = nn.Conv2d(planes, out, 1, bias=False), nn.BatchNorm2d(out)
        self.relu = nn.ReLU()
        self.downsample = (nn.Sequential(nn.Conv2d(inplanes, out, 1, stride, bias=False), nn.BatchNorm2d(out))
                           if stride != 1 or inplanes != out else None)

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + (self.downsample(x) if self.downsample is not None else x))


def ref_stage(inplanes: int, planes: int, blocks: int, stride: int) -> nn.Sequential:
    layers = [RefBottleneck(inplanes, planes, stride)]
    layers += [RefBottleneck(planes * 4, planes, 1) for _ in range(blocks - 1)]
    return nn.Sequential(*layers)


class RefLSegRNNetZS(RefDPTNet):
    """Official LSegRNNetZS: ResNet-101 stages at 1/4, 1/8, 1/16, 1/32 (256, 512, 1024, 2048 channels)."""

    def __init__(self, sz: Sizes = SMOKE) -> None:
        super().__init__(sz, (256, 512, 1024, 2048))
        self.pretrained = nn.Module()
        stem = [nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64), nn.ReLU(), nn.MaxPool2d(3, 2, 1)]
        self.pretrained.layer1 = nn.Sequential(*stem, ref_stage(64, 64, RN101_BLOCKS[0], 1))
        self.pretrained.layer2 = ref_stage(256, 128, RN101_BLOCKS[1], 2)
        self.pretrained.layer3 = ref_stage(512, 256, RN101_BLOCKS[2], 2)
        self.pretrained.layer4 = ref_stage(1024, 512, RN101_BLOCKS[3], 2)

    def encode(self, x):
        maps = []
        for k in range(1, 5):
            x = getattr(self.pretrained, f"layer{k}")(x)
            maps.append(x)
        return maps


def make_rn_reference(seed: int = 0, sz: Sizes = SMOKE) -> RefLSegRNNetZS:
    torch.manual_seed(seed)
    net = RefLSegRNNetZS(sz)
    with torch.no_grad():  # keep activations O(1) through 33 random bottlenecks
        for m in net.pretrained.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
    net = randomize(net)
    with torch.no_grad():
        for m in net.pretrained.modules():
            if isinstance(m, RefBottleneck):
                m.bn3.weight.uniform_(0.1, 0.3)  # residual branches small, as in a trained ResNet
    return net


def imagenet_normalize(x01: torch.Tensor) -> torch.Tensor:
    """What the official zero-shot loader feeds the ResNet: [0, 1] pixels with ImageNet mean/std."""
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (x01 - mean) / std
