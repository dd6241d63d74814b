"""Configuration: canonical form and hashes, validation messages, overrides, round trips, lr schedule."""

from __future__ import annotations

import dataclasses
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lth_checks.config import (
    DATASETS,
    MODELS,
    PRECISIONS,
    PRUNE_STRATEGIES,
    SCHEMA_VERSION,
    DataConfig,
    IMPConfig,
    ModelConfig,
    PruneConfig,
    TrainConfig,
    canonical_json,
    content_hash,
    from_dict,
    override,
    to_dict,
)
from lth_checks.errors import ConfigError, LthError
from lth_checks.recipes import RECIPES, get_recipe, iterations_per_epoch, recipe_config

# Computed once (lth-checks 0.1.0, SCHEMA_VERSION 1) and written down: if one of these changes,
# every existing cache entry silently stops being found. Bump SCHEMA_VERSION on purpose instead.
SMOKE_KEY = "8225e54b8f327f91"
DEFAULT_TRAIN_HASH = "4b0247abc038f999"
DEFAULT_IMP_KEY = "b0b82ab7588507ab"
EMPTY_HASH = "18f8b0af8ef05583"
# small's key is the one of its 6-epoch redesign (issue 10); the rest are as before issue 13's data options
PRE_ISSUE13_KEYS = {"smoke": "8225e54b8f327f91", "small": "8a34cd8abd1d1ab0", "cifar10_resnet20": "2065732c9a557763",
                    "cifar10_vgg16": "86f0397ac5f67cb1", "mnist_lenet300": "70f4c12fdc0625da",
                    "imagenet_resnet50": "23421744b265de8f"}
DEFAULT_TRAIN_JSON = (
    '{"schema":1,"value":{"batch_size":128,"gamma":0.1,"iterations":1000,"lr":0.1,"milestones":[],'
    '"momentum":0.9,"nesterov":false,"precision":"fp32","warmup_iterations":0,"weight_decay":0.0001}}'
)


def one_line_error(excinfo: pytest.ExceptionInfo) -> str:
    message = str(excinfo.value)
    assert message and "\n" not in message, f"not a one-line message: {message!r}"
    return message


# ----------------------------------------------------------------------------- canonical form, hashes

def test_pinned_hashes() -> None:
    assert SCHEMA_VERSION == 1
    assert content_hash(recipe_config("smoke").key_dict()) == SMOKE_KEY
    assert recipe_config("smoke").key == SMOKE_KEY
    assert content_hash(TrainConfig()) == DEFAULT_TRAIN_HASH
    assert IMPConfig().key == DEFAULT_IMP_KEY
    assert content_hash({}) == EMPTY_HASH
    assert canonical_json(TrainConfig()) == DEFAULT_TRAIN_JSON


def test_canonical_json_is_sorted_compact_and_order_independent() -> None:
    a = canonical_json({"b": 1, "a": [1.5, (2, 3)], "c": {"y": True, "x": None}})
    b = canonical_json({"c": {"x": None, "y": True}, "a": [1.5, [2, 3]], "b": 1})
    assert a == b == '{"schema":1,"value":{"a":[1.5,[2,3]],"b":1,"c":{"x":null,"y":true}}}'
    assert content_hash({"b": 1, "a": 2}) == content_hash({"a": 2, "b": 1})
    assert len(content_hash({})) == 16 and len(content_hash({}, length=40)) == 40


def test_key_ignores_levels_and_recipe_label_but_not_the_rest() -> None:
    base = recipe_config("smoke")
    assert dataclasses.replace(base, levels=3, recipe="other").key == base.key
    assert dataclasses.replace(base, seed=1).key != base.key
    assert dataclasses.replace(base, rewind_iteration=0).key != base.key
    assert override(base, ["train.lr=0.04"]).key != base.key
    assert override(base, ["train.precision=bf16"]).key != base.key
    assert "levels" not in base.key_dict() and "recipe" not in base.key_dict()


def test_non_finite_values_cannot_reach_the_hash() -> None:
    with pytest.raises(ValueError):
        canonical_json({"x": float("nan")})


# ----------------------------------------------------------------------------- validation

@pytest.mark.parametrize(("make", "valid"), [
    (lambda: DataConfig(dataset="svhn"), DATASETS),
    (lambda: ModelConfig(name="resnet1000"), MODELS),
    (lambda: PruneConfig(strategy="smallest"), PRUNE_STRATEGIES),
    (lambda: TrainConfig(precision="fp16"), PRECISIONS),
])
def test_unknown_choices_list_the_valid_ones(make, valid) -> None:
    with pytest.raises(ConfigError) as excinfo:
        make()
    message = one_line_error(excinfo)
    assert all(v in message for v in valid), message


@pytest.mark.parametrize(("make", "fragment"), [
    (lambda: TrainConfig(lr=0.0), "train.lr"),
    (lambda: TrainConfig(lr=float("nan")), "train.lr"),
    (lambda: TrainConfig(lr=float("inf")), "train.lr"),
    (lambda: TrainConfig(momentum=1.0), "train.momentum"),
    (lambda: TrainConfig(weight_decay=-1e-4), "train.weight_decay"),
    (lambda: TrainConfig(gamma=0.0), "train.gamma"),
    (lambda: TrainConfig(gamma=float("nan")), "train.gamma"),
    (lambda: TrainConfig(batch_size=0), "train.batch_size"),
    (lambda: TrainConfig(iterations=0), "train.iterations"),
    (lambda: TrainConfig(iterations=100, milestones=(50, 20)), "train.milestones"),
    (lambda: TrainConfig(iterations=100, milestones=(100,)), "train.milestones"),
    (lambda: TrainConfig(warmup_iterations=-1), "train.warmup_iterations"),
    (lambda: TrainConfig(momentum=0.0, nesterov=True), "train.nesterov"),
    (lambda: PruneConfig(fraction=1.0), "prune.fraction"),
    (lambda: PruneConfig(fraction=0.0), "prune.fraction"),
    (lambda: ModelConfig(name="cifar_resnet", depth=21), "model.depth"),
    (lambda: ModelConfig(width=0), "model.width"),
    (lambda: ModelConfig(hidden=(10, 0)), "model.hidden"),
    (lambda: DataConfig(eval_train_examples=0), "data.eval_train_examples"),
    (lambda: IMPConfig(train=TrainConfig(iterations=100), rewind_iteration=100), "rewind_iteration"),
    (lambda: IMPConfig(seed=-1), "seed"),
    (lambda: IMPConfig(levels=-1), "levels"),
])
def test_invalid_values_fail_with_one_line_config_error(make, fragment) -> None:
    with pytest.raises(ConfigError) as excinfo:
        make()
    assert fragment in one_line_error(excinfo)


def test_config_error_is_an_lth_error_and_a_value_error() -> None:
    assert issubclass(ConfigError, LthError) and issubclass(ConfigError, ValueError)


def test_unknown_recipe_lists_valid_recipes() -> None:
    with pytest.raises(ConfigError) as excinfo:
        get_recipe("nosuch")
    message = one_line_error(excinfo)
    assert "nosuch" in message
    assert all(name in message for name in RECIPES)
    with pytest.raises(ConfigError):
        recipe_config("nosuch")


def test_recipes_are_valid_and_labelled() -> None:
    expected = {"smoke", "small", "cifar10_resnet20", "cifar10_vgg16", "mnist_lenet300", "imagenet_resnet50"}
    assert expected <= set(RECIPES)
    for name, recipe in RECIPES.items():
        assert recipe.config.recipe == name
        assert recipe.source in ("(ours)", "(OpenLTH)")
        assert all(0 <= k < recipe.config.train.iterations for k in recipe.default_rewinds)
    assert not get_recipe("smoke").needs_files
    # The paper-scale CIFAR-10 ResNet-20 schedule of CLAIMS.md.
    t = get_recipe("cifar10_resnet20").config.train
    assert iterations_per_epoch(50_000, 128) == 390
    assert (t.iterations, t.milestones, t.lr, t.momentum, t.weight_decay, t.batch_size) == (
        62_400, (31_200, 46_800), 0.1, 0.9, 1e-4, 128)


def test_recipe_config_replaces_top_level_fields_and_ignores_none() -> None:
    cfg = recipe_config("smoke", levels=3, rewind_iteration=0, seed=None)
    assert (cfg.levels, cfg.rewind_iteration, cfg.seed) == (3, 0, get_recipe("smoke").config.seed)


# ----------------------------------------------------------------------------- overrides

def test_override_sets_nested_and_top_level_fields() -> None:
    base = recipe_config("smoke")
    cfg = override(base, ["train.lr=0.05", "seed=3", "train.milestones=100,200", "train.nesterov=true",
                          "model.hidden=32 16", "prune.exclude_output=yes", "levels=4"])
    assert cfg.train.lr == 0.05 and isinstance(cfg.train.lr, float)
    assert cfg.seed == 3 and cfg.levels == 4
    assert cfg.train.milestones == (100, 200)
    assert cfg.train.nesterov is True
    assert cfg.model.hidden == (32, 16)
    assert cfg.prune.exclude_output is True
    assert cfg.train.momentum == base.train.momentum  # untouched fields stay
    assert override(base, []) == base
    assert override(base, ["train.milestones="]).train.milestones == ()


def test_override_of_an_int_accepts_integral_floats_only() -> None:
    base = recipe_config("smoke")
    assert override(base, ["train.batch_size=32"]).train.batch_size == 32
    with pytest.raises(ConfigError) as excinfo:
        override(base, ["train.batch_size=3.5"])
    assert "train.batch_size" in one_line_error(excinfo)
    with pytest.raises(ConfigError) as excinfo:
        override(base, ["train.nesterov=maybe"])
    assert "train.nesterov" in one_line_error(excinfo)


def test_override_unknown_field_lists_valid_fields() -> None:
    with pytest.raises(ConfigError) as excinfo:
        override(recipe_config("smoke"), ["train.learning_rate=0.05"])
    message = one_line_error(excinfo)
    assert "train.learning_rate" in message
    for name in ("lr", "momentum", "weight_decay", "milestones", "warmup_iterations"):
        assert name in message


def test_override_unknown_section_lists_sections() -> None:
    with pytest.raises(ConfigError) as excinfo:
        override(recipe_config("smoke"), ["optim.lr=0.05"])
    message = one_line_error(excinfo)
    assert all(s in message for s in ("data", "model", "train", "prune"))


def test_override_needs_key_value() -> None:
    with pytest.raises(ConfigError) as excinfo:
        override(recipe_config("smoke"), ["train.lr"])
    assert "key=value" in one_line_error(excinfo)


def test_override_value_is_validated() -> None:
    with pytest.raises(ConfigError) as excinfo:
        override(recipe_config("smoke"), ["prune.strategy=smallest"])
    assert "magnitude_global" in one_line_error(excinfo)
    with pytest.raises(ConfigError) as excinfo:
        override(recipe_config("smoke"), ["train.iterations=40"])  # the smoke milestones lie beyond 40
    assert "train.milestones" in one_line_error(excinfo)


def test_from_dict_rejects_unknown_keys_listing_valid_ones() -> None:
    with pytest.raises(ConfigError) as excinfo:
        from_dict(TrainConfig, {"lr": 0.1, "bogus": 1})
    message = one_line_error(excinfo)
    assert "bogus" in message and "lr" in message and "momentum" in message
    with pytest.raises(ConfigError) as excinfo:
        from_dict(IMPConfig, {"train": {"bogus": 1}})
    assert "train.bogus" in one_line_error(excinfo)
    with pytest.raises(ConfigError):
        from_dict(IMPConfig, {"train": 5})


# ----------------------------------------------------------------------------- round trips

def test_round_trip_every_recipe() -> None:
    for recipe in RECIPES.values():
        cfg = recipe.config
        d = json.loads(json.dumps(to_dict(cfg)))
        back = from_dict(IMPConfig, d)
        assert back == cfg
        assert back.key == cfg.key


@st.composite
def imp_configs(draw) -> IMPConfig:
    iterations = draw(st.integers(1, 100_000))
    milestones = tuple(sorted(draw(st.sets(st.integers(1, iterations - 1), max_size=3)))) if iterations > 1 else ()
    train = TrainConfig(
        lr=draw(st.floats(1e-6, 10.0, allow_nan=False, allow_infinity=False)),
        momentum=draw(st.floats(0.0, 0.99)),
        weight_decay=draw(st.floats(0.0, 1e-2)),
        batch_size=draw(st.integers(1, 4096)),
        iterations=iterations,
        milestones=milestones,
        warmup_iterations=draw(st.integers(0, 1000)),
        precision=draw(st.sampled_from(PRECISIONS)),
    )
    return IMPConfig(
        data=DataConfig(dataset=draw(st.sampled_from(DATASETS)), augment=draw(st.booleans())),
        model=ModelConfig(name=draw(st.sampled_from(("mlp", "lenet300", "vgg16_bn"))),
                          hidden=tuple(draw(st.lists(st.integers(1, 512), max_size=3)))),
        train=train,
        prune=PruneConfig(fraction=draw(st.floats(0.01, 0.99)), strategy=draw(st.sampled_from(PRUNE_STRATEGIES)),
                          exclude=tuple(draw(st.lists(st.sampled_from(("fc.weight", "layers.0.weight")),
                                                      max_size=2)))),
        rewind_iteration=draw(st.integers(0, iterations - 1)),
        seed=draw(st.integers(0, 2**31)),
        levels=draw(st.integers(0, 30)),
        recipe=draw(st.sampled_from(("custom", "smoke"))),
    )


@settings(max_examples=40, deadline=None)
@given(imp_configs())
def test_from_dict_to_dict_round_trip(cfg: IMPConfig) -> None:
    d = to_dict(cfg)
    assert from_dict(IMPConfig, d) == cfg
    # Through real JSON text too (tuples become lists, floats print shortest-round-trip).
    back = from_dict(IMPConfig, json.loads(canonical_json(cfg))["value"])
    assert back == cfg and back.key == cfg.key


@settings(max_examples=30, deadline=None)
@given(st.floats(1e-6, 10.0), st.integers(1, 10_000))
def test_override_strings_round_trip(lr: float, iterations: int) -> None:
    cfg = override(IMPConfig(), [f"train.lr={lr!r}", f"train.iterations={iterations}", "rewind_iteration=0"])
    assert cfg.train.lr == lr and cfg.train.iterations == iterations


# ----------------------------------------------------------------------------- learning-rate schedule

def test_lr_schedule_milestones() -> None:
    t = TrainConfig(lr=0.1, gamma=0.1, iterations=100, milestones=(30, 60))
    assert [t.lr_at(i) for i in (0, 29)] == [0.1, 0.1]
    assert t.lr_at(30) == pytest.approx(0.01) and t.lr_at(59) == pytest.approx(0.01)
    assert t.lr_at(60) == pytest.approx(0.001) and t.lr_at(99) == pytest.approx(0.001)


def test_lr_schedule_constant_without_milestones() -> None:
    t = TrainConfig(lr=0.05, iterations=10)
    assert all(t.lr_at(i) == 0.05 for i in range(10))


def test_lr_schedule_linear_warmup_then_steps() -> None:
    t = TrainConfig(lr=0.4, iterations=100, warmup_iterations=4, milestones=(50,))
    assert [t.lr_at(i) for i in range(5)] == pytest.approx([0.1, 0.2, 0.3, 0.4, 0.4])
    assert t.lr_at(49) == pytest.approx(0.4)
    assert t.lr_at(50) == pytest.approx(0.04)


def test_lr_schedule_imagenet_recipe() -> None:
    t = get_recipe("imagenet_resnet50").config.train
    ipe = iterations_per_epoch(1_281_167, 1024)
    assert t.warmup_iterations == 5 * ipe and t.milestones == (30 * ipe, 60 * ipe, 80 * ipe)
    assert t.lr_at(0) == pytest.approx(0.4 / (5 * ipe))
    assert t.lr_at(5 * ipe) == pytest.approx(0.4)
    assert t.lr_at(t.iterations - 1) == pytest.approx(0.4e-3)


# ----------------------------------------------------------------------------- data options (issue 13)

def test_new_data_options_at_their_default_leave_every_existing_key_alone() -> None:
    # The hashes pinned above cover smoke and the defaults; these are the other recipes' keys before
    # data.resolution / data.train_examples existed (computed on main at 9a41fd0).
    assert "resolution" not in recipe_config("smoke").key_dict()["data"]
    assert "train_examples" not in IMPConfig().key_dict()["data"]
    assert {name: recipe_config(name).key for name in PRE_ISSUE13_KEYS} == PRE_ISSUE13_KEYS


def test_new_data_options_change_the_key_when_set() -> None:
    base = recipe_config("small")
    for setting in ("data.resolution=16", "data.train_examples=20000"):
        changed = override(base, [setting])
        assert changed.key != base.key
        assert setting.split("=")[0].split(".")[1] in changed.key_dict()["data"]
    cpu = recipe_config("cpu")
    assert cpu.key_dict()["data"]["resolution"] == 16 and cpu.key_dict()["data"]["train_examples"] == 10_000
    assert from_dict(IMPConfig, cpu.key_dict()).key == cpu.key  # the stored form rebuilds the same key


@pytest.mark.parametrize("setting,words", [("data.resolution=-1", "data.resolution must be >= 0"),
                                           ("data.train_examples=-5", "data.train_examples must be >= 0"),
                                           ("data.resolution=abc", "data.resolution expects int")])
def test_bad_data_options_are_one_line(setting: str, words: str) -> None:
    with pytest.raises(ConfigError) as excinfo:
        override(recipe_config("cpu"), [setting])
    assert words in one_line_error(excinfo)
