"""The model zoo: every family for every input shape, configs, checkpoints and their errors."""

import pytest
import torch

from workbench.errors import ModelError
from workbench.models.zoo import (
    ZOO,
    ModelConfig,
    build_model,
    count_params,
    load_checkpoint,
    read_checkpoint,
    save_checkpoint,
)

SHAPES = [(1, 8, 8), (1, 28, 28), (3, 32, 32)]


@pytest.mark.parametrize("family", list(ZOO))
@pytest.mark.parametrize("shape", SHAPES)
def test_every_family_gives_logits_for_any_input_shape(family, shape):
    model = build_model(ModelConfig(family), shape, 7).eval()
    with torch.no_grad():
        assert model(torch.randn(2, *shape)).shape == (2, 7)
    assert set(model.stages) >= {"embedding"}
    modules = dict(model.named_modules())
    assert all(path.removesuffix(":in") in modules for path in model.stages.values())


@pytest.mark.parametrize("depth", [8, 14, 20, 32, 56])
def test_cifar_resnet_depths_have_6n_plus_2_layers(depth):
    model = build_model(ModelConfig("resnet", depth=depth), (3, 32, 32), 10)
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d) and m.kernel_size == (3, 3)]
    assert len(convs) + 1 == depth  # 3x3 convs + the final linear layer


def test_size_knobs_change_the_parameter_count():
    small = count_params(build_model(ModelConfig("mlp", depth=1, width=32), (1, 28, 28), 10))
    big = count_params(build_model(ModelConfig("mlp", depth=1, width=64), (1, 28, 28), 10))
    assert small == 784 * 32 + 32 + 32 * 10 + 10 and big > small
    assert count_params(build_model(ModelConfig("cnn", width=8), (1, 8, 8), 10)) < \
        count_params(build_model(ModelConfig("cnn", width=16), (1, 8, 8), 10))


def test_model_config_round_trips_and_labels():
    cfg = ModelConfig("resnet", depth=8, width=32)
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg
    assert cfg.label() == "resnet(d=8, w=32)"
    assert ModelConfig("resnet18").label() == "resnet18"


@pytest.mark.parametrize("kwargs, message", [
    ({"family": "vit"}, "unknown model family 'vit'"),
    ({"family": "resnet", "depth": 10}, "depth must be one of"),
    ({"family": "mlp", "width": 0}, "a whole number between 1 and 65536, got 0"),
    ({"family": "mlp", "width": 0.5}, "width must be a whole number, got 0.5"),
    ({"family": "cnn", "width": 0.5}, "width must be a whole number, got 0.5"),
    ({"family": "mlp", "width": float("inf")}, "width must be a whole number, got inf"),
    ({"family": "mobilenet_v2", "width": float("nan")}, "multiplier in \\(0, 16\\]"),
    ({"family": "mlp", "depth": 1.5}, "depth must be a whole number"),
    ({"family": "resnet18", "depth": 3}, "has no depth knob"),
    ({"family": "cnn", "pretrained": True}, "pretrained weights exist only"),
])
def test_bad_model_configs_are_clear_errors(kwargs, message):
    with pytest.raises(ModelError, match=message):
        ModelConfig(**kwargs)


def test_checkpoint_round_trip_keeps_config_and_weights(tmp_path):
    model = build_model(ModelConfig("cnn", depth=1, width=8), (1, 8, 8), 10).eval()
    size = save_checkpoint(model, tmp_path / "m.safetensors")
    assert size == (tmp_path / "m.safetensors").stat().st_size
    loaded, meta = load_checkpoint(tmp_path / "m.safetensors")
    assert loaded.kdw_config == model.kdw_config and meta["kdw_num_classes"] == "10"
    x = torch.randn(3, 1, 8, 8)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))


def test_corrupted_or_foreign_checkpoints_are_refused_clearly(tmp_path):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x00" * 3 + b"definitely not safetensors")
    with pytest.raises(ModelError, match="not a valid safetensors checkpoint"):
        load_checkpoint(bad)
    pickled = tmp_path / "model.pt"
    torch.save({"w": torch.zeros(2)}, pickled)  # a pickle: never unpickled by us
    with pytest.raises(ModelError, match="not a valid safetensors checkpoint"):
        read_checkpoint(pickled)
    with pytest.raises(ModelError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.safetensors")


def test_truncated_checkpoint_is_refused(tmp_path):
    model = build_model(ModelConfig("mlp", depth=1, width=8), (1, 8, 8), 10)
    p = tmp_path / "m.safetensors"
    save_checkpoint(model, p)
    p.write_bytes(p.read_bytes()[:-40])
    with pytest.raises(ModelError, match="not a valid safetensors checkpoint"):
        load_checkpoint(p)


def test_weights_that_do_not_fit_the_config_say_so(tmp_path):
    model = build_model(ModelConfig("mlp", depth=1, width=8), (1, 8, 8), 10)
    p = tmp_path / "m.safetensors"
    save_checkpoint(model, p)
    with pytest.raises(ModelError, match="do not fit mlp"):
        load_checkpoint(p, ModelConfig("mlp", depth=1, width=16))


def test_a_5000_digit_number_in_checkpoint_metadata_names_its_key_and_file():
    """Before: 'OverflowError: cannot convert float infinity to integer', naming neither."""
    from workbench.errors import ModelError
    from workbench.models.zoo import _meta_int

    with pytest.raises(ModelError, match=r"metadata key kdw_num_classes of t\.safetensors must be a whole number"):
        _meta_int("9" * 5000, "kdw_num_classes", "t.safetensors", 1, 1_000_000)
    assert _meta_int("10", "kdw_num_classes", "t.safetensors", 1, 1_000_000) == 10
