"""Models: shapes, which weights are prunable, ResNet-20's size, reproducible initialisation."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lth_checks.config import ModelConfig
from lth_checks.errors import ConfigError
from lth_checks.models import CifarResNet, PrunableModel, build_model

# (config, input shape (C, H, W), classes, batch). ResNet-50 runs on 64x64 to stay quick.
CASES = {
    "mlp": (ModelConfig(name="mlp", hidden=(32, 16)), (1, 8, 8), 10, 3),
    "lenet300": (ModelConfig(name="lenet300", hidden=(300, 100)), (1, 28, 28), 10, 2),
    "cifar_resnet20": (ModelConfig(name="cifar_resnet", depth=20, width=16), (3, 32, 32), 10, 2),
    "cifar_resnet8_w4": (ModelConfig(name="cifar_resnet", depth=8, width=4), (3, 8, 8), 7, 2),
    "vgg16_bn": (ModelConfig(name="vgg16_bn"), (3, 32, 32), 100, 2),
    "resnet18": (ModelConfig(name="resnet18"), (3, 32, 32), 10, 2),
    "resnet50": (ModelConfig(name="resnet50"), (3, 64, 64), 1000, 1),
}

# Exact count of ResNet-20's conv + linear weights (CLAIMS.md: "~0.27M"):
# stem 3*16*9 = 432; stage 1: 6 * 16*16*9 = 13,824; stage 2: 16*32*9 + 5 * 32*32*9 + 1x1 shortcut 16*32
# = 51,200; stage 3: 32*64*9 + 5 * 64*64*9 + 1x1 shortcut 32*64 = 204,800; fc 64*10 = 640.
RESNET20_PRUNABLE = 270_896


def conv_and_linear_weights(model: nn.Module) -> list[str]:
    """Independent listing: the weight of every Conv2d / Linear module, in module order."""
    out = []
    for mod_name, module in model.named_modules():
        if type(module) in (nn.Conv2d, nn.Linear):
            out.append(f"{mod_name}.weight")
    return out


@pytest.mark.parametrize("case", list(CASES))
def test_builds_runs_and_names_prunable_weights(case: str) -> None:
    config, shape, classes, batch = CASES[case]
    model = build_model(config, shape, classes, seed=0)
    assert isinstance(model, PrunableModel)
    model.eval()
    with torch.no_grad():
        out = model(torch.randn(batch, *shape))
    assert out.shape == (batch, classes)
    assert torch.isfinite(out).all()

    params = dict(model.named_parameters())
    names = model.prunable_names()
    assert names == conv_and_linear_weights(model)
    assert len(set(names)) == len(names)
    # Exactly the conv / linear weights: every other parameter is a bias or a batch-norm vector.
    assert set(names) == {n for n, p in params.items() if p.dim() > 1}
    assert all(params[n].dim() == 1 for n in params if n not in names)
    # The output layer is the classifier and is prunable (recipes may exclude it).
    assert model.output_weight in names
    assert params[model.output_weight].shape[0] == classes
    assert names[-1] == model.output_weight


def test_resnet20_has_about_027m_prunable_weights() -> None:
    model = build_model(ModelConfig(name="cifar_resnet", depth=20, width=16), (3, 32, 32), 10, seed=0)
    params = dict(model.named_parameters())
    count = sum(params[n].numel() for n in model.prunable_names())
    assert count == RESNET20_PRUNABLE
    # 19 convs on the main path + 2 projection shortcuts + fc.
    assert len(model.prunable_names()) == 22
    assert sum(".shortcut.0.weight" in n for n in model.prunable_names()) == 2


def test_resnet20_structure() -> None:
    model = CifarResNet(depth=20, width=16)
    assert len(model.blocks) == 9
    widths = [block.conv2.out_channels for block in model.blocks]
    assert widths == [16] * 3 + [32] * 3 + [64] * 3
    # 1x1 conv + BN projection shortcuts exactly where the shape changes.
    projections = [i for i, block in enumerate(model.blocks) if len(block.shortcut) > 0]
    assert projections == [3, 6]
    assert isinstance(model.blocks[3].shortcut[1], nn.BatchNorm2d)


def test_openlth_initialisation() -> None:
    model = build_model(ModelConfig(name="cifar_resnet", depth=8, width=8), (3, 8, 8), 10, seed=1)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            assert torch.equal(m.weight, torch.ones_like(m.weight))
            assert torch.equal(m.bias, torch.zeros_like(m.bias))
        if isinstance(m, nn.Linear):
            assert torch.equal(m.bias, torch.zeros_like(m.bias))


@pytest.mark.parametrize("case", ["mlp", "cifar_resnet8_w4"])
def test_same_seed_same_initialisation(case: str) -> None:
    config, shape, classes, _ = CASES[case]
    a = build_model(config, shape, classes, seed=7).state_dict()
    b = build_model(config, shape, classes, seed=7).state_dict()
    c = build_model(config, shape, classes, seed=8).state_dict()
    assert a.keys() == b.keys() == c.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    w = next(n for n in a if a[n].dim() > 1)
    assert not torch.equal(a[w], c[w])


def test_build_model_does_not_disturb_the_global_rng() -> None:
    config, shape, classes, _ = CASES["cifar_resnet8_w4"]
    torch.manual_seed(1234)
    expected = torch.rand(5)
    torch.manual_seed(1234)
    build_model(config, shape, classes, seed=3)
    assert torch.equal(torch.rand(5), expected)
    # Without a seed it draws from (and so advances) the global generator, as nn.init does.
    torch.manual_seed(1234)
    build_model(config, shape, classes)
    assert not torch.equal(torch.rand(5), expected)


def test_unknown_model_fails_with_config_error() -> None:
    config = ModelConfig()
    object.__setattr__(config, "name", "nosuch")  # bypass the dataclass validation
    with pytest.raises(ConfigError, match="nosuch"):
        build_model(config, (1, 8, 8), 10)
