import pytest

from involution.tasks.classification import RECIPES, TrainConfig, resolve


def test_recipe_fills_unset_fields_and_scales_lr():
    cfg = resolve(TrainConfig(data="digits", batch_size=128))
    assert cfg.recipe == "digits" and cfg.model == RECIPES["digits"]["model"]
    assert cfg.lr == pytest.approx(RECIPES["digits"]["base_lr"] * 128 / RECIPES["digits"]["base_batch"])
    assert cfg.model_kwargs == RECIPES["digits"]["model_kwargs"]


def test_explicit_values_win_and_a_chosen_model_drops_recipe_kwargs():
    cfg = resolve(TrainConfig(data="digits", model="resnet26_small", lr=0.05, epochs=2))
    assert cfg.lr == 0.05 and cfg.epochs == 2 and cfg.model_kwargs == {}


def test_imagenet_recipe_is_the_papers():
    cfg = resolve(TrainConfig(data="imagefolder", recipe="imagenet", batch_size=256))
    assert cfg.model == "rednet50" and cfg.epochs == 130 and cfg.nesterov and cfg.momentum == 0.9
    assert cfg.weight_decay == 1e-4 and cfg.warmup_epochs == 5 and cfg.label_smoothing == 0.1
    assert cfg.lr == pytest.approx(0.8 * 256 / 2048)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(data="mnist"), "unknown data set"),
        (dict(recipe="imagenet"), "--data imagefolder"),
        (dict(epochs=0), "--epochs"),
        (dict(amp="fp8"), "--amp"),
        (dict(val_fraction=1.5), "--val-fraction"),
        (dict(clip_grad=-1.0), "--clip-grad"),
    ],
)
def test_bad_options_are_named(kwargs, match):
    with pytest.raises(ValueError, match=match):
        resolve(TrainConfig(**kwargs))


def test_unknown_option_in_a_saved_config_is_named():
    with pytest.raises(ValueError, match="unknown training options"):
        TrainConfig.from_dict({"data": "digits", "colour": "blue"})
