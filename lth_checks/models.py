"""Models of the recipes. Each says which parameters are prunable and which layer is the output.

Prunable = the weights of every Conv2d and Linear layer; biases and batch norm are never pruned.
Initialisation follows OpenLTH: Kaiming-normal conv/linear weights, BN weight 1 and bias 0.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from .config import ModelConfig
from .errors import ConfigError


class PrunableModel(nn.Module):
    """Base: subclasses set `output_layer` to the module name of the classifier layer."""

    output_layer: str = "fc"

    def prunable_names(self) -> list[str]:
        """Parameter names of conv and linear weights, in registration order."""
        return [f"{name}.weight" if name else "weight" for name, m in self.named_modules()
                if isinstance(m, (nn.Conv2d, nn.Linear))]

    @property
    def output_weight(self) -> str:
        return f"{self.output_layer}.weight"


def _init(module: nn.Module) -> None:
    if isinstance(module, (nn.Conv2d, nn.Linear)):
        nn.init.kaiming_normal_(module.weight)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.BatchNorm2d):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


class MLP(PrunableModel):
    """Fully connected ReLU network on flattened inputs (LeNet-300-100 is hidden=(300, 100))."""

    def __init__(self, in_features: int, hidden: tuple[int, ...], num_classes: int):
        super().__init__()
        sizes = (in_features, *hidden)
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:]))
        self.fc = nn.Linear(sizes[-1], num_classes)
        self.apply(_init)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(1)
        for layer in self.layers:
            x = F.relu(layer(x))
        return self.fc(x)


class BasicBlock(nn.Module):
    """3x3-3x3 residual block; a 1x1 conv + BN projection shortcut when the shape changes."""

    def __init__(self, f_in: int, f_out: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(f_in, f_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(f_out)
        self.conv2 = nn.Conv2d(f_out, f_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(f_out)
        self.shortcut = nn.Sequential()
        if stride != 1 or f_in != f_out:
            self.shortcut = nn.Sequential(nn.Conv2d(f_in, f_out, 1, stride, bias=False), nn.BatchNorm2d(f_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(PrunableModel):
    """ResNet for 32x32 inputs: 3 stages of (depth-2)/6 basic blocks, widths w, 2w, 4w (ResNet-20: 16)."""

    def __init__(self, depth: int = 20, width: int = 16, num_classes: int = 10, in_channels: int = 3):
        super().__init__()
        n = (depth - 2) // 6
        self.conv = nn.Conv2d(in_channels, width, 3, 1, 1, bias=False)
        self.bn = nn.BatchNorm2d(width)
        blocks, f_in = [], width
        for stage, f_out in enumerate((width, 2 * width, 4 * width)):
            for i in range(n):
                blocks.append(BasicBlock(f_in, f_out, 2 if stage > 0 and i == 0 else 1))
                f_in = f_out
        self.blocks = nn.Sequential(*blocks)
        self.fc = nn.Linear(f_in, num_classes)
        self.apply(_init)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(F.relu(self.bn(self.conv(x))))
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


class VGG16BN(PrunableModel):
    """VGG-16 with batch norm for CIFAR (OpenLTH's cifar_vgg_16): 13 convs, global pool, one linear."""

    PLAN = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512)

    def __init__(self, num_classes: int = 10, in_channels: int = 3):
        super().__init__()
        layers: list[nn.Module] = []
        c = in_channels
        for spec in self.PLAN:
            if spec == "M":
                layers.append(nn.MaxPool2d(2))
            else:
                layers += [nn.Conv2d(c, int(spec), 3, padding=1), nn.BatchNorm2d(int(spec)), nn.ReLU(inplace=True)]
                c = int(spec)
        self.features = nn.Sequential(*layers)
        self.fc = nn.Linear(c, num_classes)
        self.apply(_init)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(F.adaptive_avg_pool2d(self.features(x), 1).flatten(1))


class ResNet18(PrunableModel):
    """ResNet-18 for CIFAR: 3x3 stem, no max-pool, stages of 2 basic blocks at 64/128/256/512."""

    def __init__(self, num_classes: int = 10, in_channels: int = 3):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, 64, 3, 1, 1, bias=False)
        self.bn = nn.BatchNorm2d(64)
        blocks, f_in = [], 64
        for stage, f_out in enumerate((64, 128, 256, 512)):
            for i in range(2):
                blocks.append(BasicBlock(f_in, f_out, 2 if stage > 0 and i == 0 else 1))
                f_in = f_out
        self.blocks = nn.Sequential(*blocks)
        self.fc = nn.Linear(512, num_classes)
        self.apply(_init)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(F.relu(self.bn(self.conv(x))))
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


class Bottleneck(nn.Module):
    """1x1-3x3-1x1 bottleneck with expansion 4 (stride on the 3x3, as in torchvision's v1.5)."""

    def __init__(self, f_in: int, planes: int, stride: int):
        super().__init__()
        f_out = planes * 4
        self.conv1 = nn.Conv2d(f_in, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, f_out, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(f_out)
        self.shortcut = nn.Sequential()
        if stride != 1 or f_in != f_out:
            self.shortcut = nn.Sequential(nn.Conv2d(f_in, f_out, 1, stride, bias=False), nn.BatchNorm2d(f_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        return F.relu(self.bn3(self.conv3(out)) + self.shortcut(x))


class ResNet50(PrunableModel):
    """ImageNet ResNet-50: 7x7 stem + max-pool, bottleneck stages of 3/4/6/3 blocks."""

    def __init__(self, num_classes: int = 1000, in_channels: int = 3):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, 64, 7, 2, 3, bias=False)
        self.bn = nn.BatchNorm2d(64)
        blocks, f_in = [], 64
        for stage, (planes, n) in enumerate(((64, 3), (128, 4), (256, 6), (512, 3))):
            for i in range(n):
                blocks.append(Bottleneck(f_in, planes, 2 if stage > 0 and i == 0 else 1))
                f_in = planes * 4
        self.blocks = nn.Sequential(*blocks)
        self.fc = nn.Linear(f_in, num_classes)
        self.apply(_init)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.bn(self.conv(x))), 3, 2, 1)
        return self.fc(F.adaptive_avg_pool2d(self.blocks(x), 1).flatten(1))


def build_model(config: ModelConfig, input_shape: tuple[int, int, int], num_classes: int,
                seed: int | None = None) -> PrunableModel:
    """Instantiate `config` for inputs of shape (C, H, W); `seed` makes the initialisation reproducible."""
    c, h, w = input_shape
    if seed is not None:
        # A private generator would be cleaner, but nn.init draws from the global one; fork it so
        # building a model never changes the caller's random state.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return build_model(config, input_shape, num_classes, None)
    if config.name in ("mlp", "lenet300"):
        return MLP(c * h * w, config.hidden, num_classes)
    if config.name == "cifar_resnet":
        return CifarResNet(config.depth, config.width, num_classes, c)
    if config.name == "vgg16_bn":
        return VGG16BN(num_classes, c)
    if config.name == "resnet18":
        return ResNet18(num_classes, c)
    if config.name == "resnet50":
        return ResNet50(num_classes, c)
    raise ConfigError(f"unknown model {config.name!r}")
