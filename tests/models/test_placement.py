"""``device=`` and ``dtype=`` of the model builder (timm's factory keywords): where and in which dtype a model's
parameters and buffers are created, for every registered model."""

from __future__ import annotations

import pytest
import torch

from involution.models import create_model, list_models, load_model, save_checkpoint

TINY = {"num_classes": 10, "width": 0.25}


def misplaced(model: torch.nn.Module, device: str, dtype: torch.dtype) -> list[str]:
    """Names of the tensors not on ``device``, or floating-point and not ``dtype``, or integer and not int64."""
    tensors = [*model.named_parameters(), *model.named_buffers()]
    return [
        name for name, t in tensors
        if t.device.type != device or (t.dtype != dtype if t.is_floating_point() else t.dtype != torch.int64)
    ]


@pytest.mark.parametrize("name", list_models())
def test_every_model_is_built_on_meta_in_the_dtype_asked(name):
    model = create_model(name, device="meta", dtype=torch.bfloat16)
    assert not misplaced(model, "meta", torch.bfloat16)
    assert not {"device", "dtype"} & set(model.model_kwargs)  # placement is not part of the architecture


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float64, "bfloat16"])
def test_dtype_casts_the_float32_initialisation(dtype):
    torch.manual_seed(0)
    ref = create_model("rednet26_small", **TINY)
    torch.manual_seed(0)
    model = create_model("rednet26_small", dtype=dtype, **TINY)
    want = getattr(torch, dtype) if isinstance(dtype, str) else dtype
    assert not misplaced(model, "cpu", want)
    state = model.state_dict()
    for key, value in ref.state_dict().items():  # one seed, the same weights rounded: nothing re-drawn per dtype
        expected = value.to(want) if value.is_floating_point() else value
        torch.testing.assert_close(state[key], expected, rtol=0, atol=0, msg=key)
    assert any(v.std() > 0 for k, v in state.items() if k.endswith("conv.weight"))  # real random weights compared


def test_meta_forward_in_bfloat16():
    model = create_model("rednet26_small", device="meta", dtype=torch.bfloat16, **TINY)
    x = torch.randn(2, 3, 32, 32, device="meta", dtype=torch.bfloat16)
    out = model(x)  # training mode: the stem's recompute and the involution op's fake kernels on meta
    assert out.shape == (2, 10) and out.dtype == torch.bfloat16 and out.device.type == "meta"
    final, maps = model.eval().forward_intermediates(x)
    assert [tuple(m.shape) for m in maps] == [(2, 64, 32, 32), (2, 128, 16, 16), (2, 256, 8, 8), (2, 512, 4, 4)]
    assert final.dtype == torch.bfloat16


def test_bad_placement_is_a_clear_error():
    with pytest.raises(ValueError, match="dtype must be a floating-point torch.dtype"):
        create_model("rednet26_small", dtype=torch.int64)
    with pytest.raises(ValueError, match="dtype must be a floating-point torch.dtype"):
        create_model("rednet26_small", dtype="half-ish")
    with pytest.raises(ValueError, match="device must be a torch.device"):
        create_model("rednet26_small", device="the-gpu")


def test_checkpoint_of_a_placed_model_rebuilds_and_places_again(tmp_path):
    torch.manual_seed(0)
    model = create_model("rednet26_small", dtype=torch.float64, **TINY)
    path = save_checkpoint(model, tmp_path / "m.safetensors")  # model_kwargs stay JSON: no device, no dtype
    plain = load_model(path)
    assert not misplaced(plain, "cpu", torch.float32)
    placed = load_model(path, device="cpu", dtype=torch.bfloat16)
    assert not misplaced(placed, "cpu", torch.bfloat16)
    for rebuilt in (plain, placed):  # the file's weights, in the rebuilt model's dtype
        state = rebuilt.state_dict()
        for key, value in model.state_dict().items():
            torch.testing.assert_close(state[key], value.to(state[key].dtype), rtol=0, atol=0, msg=key)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_device_and_dtype():
    model = create_model("rednet26_small", device="cuda", dtype=torch.bfloat16, **TINY)
    assert not misplaced(model, "cuda", torch.bfloat16)
    with torch.no_grad():
        out = model.eval()(torch.randn(2, 3, 32, 32, device="cuda", dtype=torch.bfloat16))
    assert out.shape == (2, 10) and out.dtype == torch.bfloat16 and torch.isfinite(out).all()
    model.reset_classifier(3)
    assert model.fc.weight.device.type == "cuda" and model.fc.weight.dtype == torch.bfloat16
