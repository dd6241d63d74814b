"""Named recipes: the published settings of CLAIMS.md plus the project's own smoke and small ones."""

from __future__ import annotations

from dataclasses import dataclass, replace

from .config import DataConfig, IMPConfig, ModelConfig, PruneConfig, TrainConfig
from .errors import ConfigError

CIFAR_TRAIN, MNIST_TRAIN, IMAGENET_TRAIN = 50_000, 60_000, 1_281_167
# The cpu recipe (issue 13): CIFAR-10 in the paper's regime, cheap enough for the whole cpu scale to run in
# an hour on 2 CPU cores. ResNet-8 width 16 on 20,000 images (the probe) measured 17 CPU-s per epoch
# here, width 8 6 CPU-s: with ~100 trainings per run only width 8 on 10,000 images (~36 CPU-s a training) fits.
CPU_TRAIN, CPU_EPOCHS, CPU_WIDTH, CPU_LATE_REWIND, CPU_EVAL_EXAMPLES = 10_000, 12, 8, 300, 2_000


def iterations_per_epoch(examples: int, batch_size: int) -> int:
    """Full batches per epoch (the last partial batch is dropped): 390 for CIFAR-10 at 128."""
    return examples // batch_size


@dataclass(frozen=True)
class Recipe:
    name: str
    source: str  # where the numbers come from: "(OpenLTH)", "(ours)", ...
    description: str
    config: IMPConfig
    needs_files: bool  # False only for the embedded digits data
    default_rewinds: tuple[int, ...]  # rewind iterations the claims compare (early vs late)


def _cifar_resnet20_train(epochs: int, milestone_epochs: tuple[float, ...]) -> TrainConfig:
    ipe = iterations_per_epoch(CIFAR_TRAIN, 128)
    return TrainConfig(lr=0.1, momentum=0.9, weight_decay=1e-4, batch_size=128, iterations=epochs * ipe,
                       milestones=tuple(round(e * ipe) for e in milestone_epochs))


_CIFAR_DATA = DataConfig(dataset="cifar10", augment=True, eval_train_examples=10_000)


def _build() -> dict[str, Recipe]:
    recipes = [
        Recipe(
            "smoke", "(ours)",
            "MLP on scikit-learn's bundled 8x8 digits; no files, CPU, seconds per level",
            IMPConfig(
                data=DataConfig(dataset="digits", augment=False, eval_train_examples=1437),
                model=ModelConfig(name="mlp", hidden=(128, 64)),
                train=TrainConfig(lr=0.05, momentum=0.9, weight_decay=1e-4, batch_size=64, iterations=600,
                                  milestones=(300, 450)),
                prune=PruneConfig(fraction=0.2, strategy="magnitude_global", exclude_output=False),
                rewind_iteration=20, levels=12, recipe="smoke"),
            needs_files=False, default_rewinds=(0, 20)),
        Recipe(
            "small", "(ours)",
            "CIFAR-10 ResNet-20 with a 6-epoch schedule (2,340 iterations, lr x0.1 at epochs 3 and 4.5; OpenLTH "
            "hyperparameters otherwise), train error and BN statistics on a fixed 2,048-image training subset; GPU",
            # sized by `lth-checks plan --scale small` to fit one 8-minute GPU command (issue 10; README)
            IMPConfig(data=replace(_CIFAR_DATA, eval_train_examples=2048),
                      model=ModelConfig(name="cifar_resnet", depth=20, width=16),
                      train=_cifar_resnet20_train(6, (3, 4.5)),
                      prune=PruneConfig(fraction=0.2), rewind_iteration=500, levels=8, recipe="small"),
            needs_files=True, default_rewinds=(0, 500)),
        Recipe(
            "cpu", "(ours)",
            "CIFAR-10 at 16x16 (2x2 average pooling), a fixed class-balanced 10,000-image training subset, the "
            "full test set, ResNet-8 width 8, OpenLTH's SGD (lr 0.1, momentum 0.9, batch 128) for 12 epochs, "
            "lr x0.1 at 80%: a reduced setting in the paper's regime (unstable at rewind 0, stable at the late "
            "rewind), not the paper's recipe; CPU",
            IMPConfig(data=DataConfig(dataset="cifar10", augment=True, eval_train_examples=CPU_EVAL_EXAMPLES,
                                      resolution=16, train_examples=CPU_TRAIN),
                      model=ModelConfig(name="cifar_resnet", depth=8, width=CPU_WIDTH),
                      train=TrainConfig(lr=0.1, momentum=0.9, weight_decay=1e-4, batch_size=128,
                                        iterations=CPU_EPOCHS * iterations_per_epoch(CPU_TRAIN, 128),
                                        milestones=(round(0.8 * CPU_EPOCHS * iterations_per_epoch(CPU_TRAIN, 128)),)),
                      prune=PruneConfig(fraction=0.2), rewind_iteration=CPU_LATE_REWIND, levels=15, recipe="cpu"),
            needs_files=True, default_rewinds=(0, CPU_LATE_REWIND)),
        Recipe(
            "cifar10_resnet20", "(OpenLTH)",
            "CIFAR-10 ResNet-20, 62,400 iterations, lr 0.1 x0.1 at 31,200 and 46,800; paper scale",
            IMPConfig(data=_CIFAR_DATA, model=ModelConfig(name="cifar_resnet", depth=20, width=16),
                      train=_cifar_resnet20_train(160, (80, 120)),
                      prune=PruneConfig(fraction=0.2), rewind_iteration=2000, levels=16,
                      recipe="cifar10_resnet20"),
            needs_files=True, default_rewinds=(0, 500, 2000)),
        Recipe(
            "cifar10_vgg16", "(OpenLTH)",
            "CIFAR-10 VGG-16 with batch norm, ResNet-20 schedule, output layer not pruned",
            IMPConfig(data=_CIFAR_DATA, model=ModelConfig(name="vgg16_bn"),
                      train=_cifar_resnet20_train(160, (80, 120)),
                      prune=PruneConfig(fraction=0.2, exclude_output=True), rewind_iteration=2000,
                      levels=16, recipe="cifar10_vgg16"),
            needs_files=True, default_rewinds=(0, 2000)),
        Recipe(
            "mnist_lenet300", "(OpenLTH)",
            "MNIST LeNet-300-100, SGD lr 0.1 no momentum, batch 128, 40 epochs, output layer not pruned",
            IMPConfig(data=DataConfig(dataset="mnist", augment=False, eval_train_examples=10_000),
                      model=ModelConfig(name="lenet300", hidden=(300, 100)),
                      train=TrainConfig(lr=0.1, momentum=0.0, weight_decay=0.0, batch_size=128,
                                        iterations=40 * iterations_per_epoch(MNIST_TRAIN, 128)),
                      prune=PruneConfig(fraction=0.2, exclude_output=True), rewind_iteration=0,
                      levels=16, recipe="mnist_lenet300"),
            needs_files=True, default_rewinds=(0, 100)),
        Recipe(
            "imagenet_resnet50", "(OpenLTH)",
            "ImageNet ResNet-50, batch 1024, lr 0.4, 5-epoch warmup, x0.1 at 30/60/80, 90 epochs",
            IMPConfig(data=DataConfig(dataset="imagenet", augment=True, eval_train_examples=10_000),
                      model=ModelConfig(name="resnet50"),
                      train=TrainConfig(
                          lr=0.4, momentum=0.9, weight_decay=1e-4, batch_size=1024,
                          iterations=90 * iterations_per_epoch(IMAGENET_TRAIN, 1024),
                          milestones=tuple(e * iterations_per_epoch(IMAGENET_TRAIN, 1024) for e in (30, 60, 80)),
                          warmup_iterations=5 * iterations_per_epoch(IMAGENET_TRAIN, 1024)),
                      prune=PruneConfig(fraction=0.2), rewind_iteration=6 * iterations_per_epoch(
                          IMAGENET_TRAIN, 1024), levels=10, recipe="imagenet_resnet50"),
            needs_files=True, default_rewinds=(0, 6 * iterations_per_epoch(IMAGENET_TRAIN, 1024))),
    ]
    return {r.name: r for r in recipes}


RECIPES: dict[str, Recipe] = _build()


def get_recipe(name: str) -> Recipe:
    """Look a recipe up by name; unknown names fail with the list of valid ones."""
    try:
        return RECIPES[name]
    except KeyError:
        raise ConfigError(f"unknown recipe {name!r}; valid recipes: {', '.join(RECIPES)}") from None


def recipe_config(name: str, **changes) -> IMPConfig:
    """The recipe's configuration with top-level fields (levels, rewind_iteration, seed) replaced."""
    return replace(get_recipe(name).config, **{k: v for k, v in changes.items() if v is not None})
