"""The torch.library registration: opcheck, torch.compile, torch.export, autocast and backend selection."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import involution
from involution.ops import current_backends, use_backend
from involution.ops.backends import get_backend
from op_helpers import CPU_BACKENDS, assert_matches_reference, is_channels_last, make_case
from reference import involution2d_reference, reference_grads

OPS = torch.ops.involution


# -------------------------------------------------------------------------------------------------- opcheck
OPCHECK_CASES = {
    "stride1": dict(n=2, c=6, g=3, kernel=(3, 3), hw=(5, 6), stride=(1, 1), padding=(1, 1), dilation=(1, 1)),
    "stride2-dilated": dict(n=2, c=4, g=2, kernel=(3, 2), hw=(7, 6), stride=(2, 2), padding=(2, 1), dilation=(2, 1)),
}


@pytest.mark.parametrize("layout", ["nchw", "nhwc", "nhwc-generator-weight"])
@pytest.mark.parametrize("name", list(OPCHECK_CASES))
def test_opcheck_all_three_ops(backend: str, name: str, layout: str) -> None:
    case = OPCHECK_CASES[name]
    gen = torch.Generator().manual_seed(0)
    x, w = make_case(**case, generator=gen)
    n, c = x.shape[:2]
    gy = torch.randn(n, c, *w.shape[-2:], generator=gen)
    if layout.startswith("nhwc"):
        x = x.contiguous(memory_format=torch.channels_last)
        gy = gy.contiguous(memory_format=torch.channels_last)
    if layout == "nhwc-generator-weight":  # a channels_last (N, G*Kh*Kw, Ho, Wo) tensor viewed as 6-D
        w = w.flatten(1, 3).contiguous(memory_format=torch.channels_last).unflatten(1, w.shape[1:4])
        assert not w.is_contiguous()
    geo = [list(case["stride"]), list(case["padding"]), list(case["dilation"])]
    x.requires_grad_()
    w.requires_grad_()
    gy.requires_grad_()
    with use_backend(backend):
        torch.library.opcheck(OPS.involution2d.default, (x, w, *geo))
        torch.library.opcheck(OPS.involution2d_backward_input.default, (gy, w, list(x.shape), *geo))
        torch.library.opcheck(OPS.involution2d_backward_weight.default, (gy, x, w, *geo))


def test_backward_ops_match_reference(backend: str) -> None:
    """The two gradient ops, called directly, give the reference gradients."""
    case = OPCHECK_CASES["stride2-dilated"]
    x, w = make_case(**case, generator=torch.Generator().manual_seed(1))
    geo = (case["stride"], case["padding"], case["dilation"])
    gy = torch.randn(x.shape[0], x.shape[1], *w.shape[-2:])
    ref_gx, ref_gw = reference_grads(x, w, gy, *geo)
    with use_backend(backend):
        gx = OPS.involution2d_backward_input(gy, w, list(x.shape), *geo)
        gw = OPS.involution2d_backward_weight(gy, x, w, *geo)
        gx_cl = OPS.involution2d_backward_input(gy.contiguous(memory_format=torch.channels_last), w, x.shape, *geo)
    assert_matches_reference(gx, ref_gx)
    assert_matches_reference(gw, ref_gw)
    assert_matches_reference(gx_cl, ref_gx)
    assert gx.is_contiguous() and is_channels_last(gx_cl)  # laid out like grad_output


# --------------------------------------------------------------------------------------------- torch.compile
def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1),
        involution.Involution2d(16, kernel_size=3, stride=2, group_channels=8),
        nn.ReLU(),
        involution.Involution2d(16, kernel_size=(3, 5), dilation=(1, 2), group_channels=4, out_channels=8),
    )


def _run(model: nn.Module, x: torch.Tensor):
    x = x.clone().requires_grad_()
    out = model(x)
    out.square().mean().backward()
    grads = {name.removeprefix("_orig_mod."): p.grad.clone() for name, p in model.named_parameters()}
    return out.detach(), x.grad, grads


def _compare_compiled(compiled_model, eager_model, x, rtol=1e-5, atol=1e-5) -> None:
    out_c, gx_c, grads_c = _run(compiled_model, x)
    out_e, gx_e, grads_e = _run(eager_model, x)
    torch.testing.assert_close(out_c, out_e, rtol=rtol, atol=atol)
    torch.testing.assert_close(gx_c, gx_e, rtol=rtol, atol=atol)
    assert grads_c.keys() == grads_e.keys()
    for name in grads_e:
        torch.testing.assert_close(grads_c[name], grads_e[name], rtol=rtol, atol=atol, msg=name)
    for p_c, p_e in zip(compiled_model.parameters(), eager_model.parameters()):
        p_c.grad = p_e.grad = None


def test_compile_aot_eager_fullgraph_matches_eager() -> None:
    torch._dynamo.reset()
    eager = _model()
    compiled_src = copy.deepcopy(eager)
    compiled = torch.compile(compiled_src, fullgraph=True, backend="aot_eager")
    x = torch.randn(2, 3, 9, 9)
    _compare_compiled(compiled, eager, x)
    assert _run(eager, x)[0].shape == (2, 8, 5, 5)


def test_compile_aot_eager_dynamic_shapes() -> None:
    """One graph serves every batch and (odd, non-square) image size: the fake impls do not specialise."""
    torch._dynamo.reset()
    eager = _model()
    compiled = torch.compile(copy.deepcopy(eager), fullgraph=True, backend="aot_eager", dynamic=True)
    shapes = [(2, 3, 9, 11), (3, 3, 12, 10), (4, 3, 15, 8)]  # batch >= 2 and H != W: no 0/1 or duck specialisation
    _compare_compiled(compiled, eager, torch.randn(shapes[0]))
    with torch._dynamo.config.patch(error_on_recompile=True):
        for shape in shapes[1:]:
            _compare_compiled(compiled, eager, torch.randn(shape))
    eager_p = dict(eager.named_parameters())
    for name, p in compiled.named_parameters():  # the two models stay identical (no optimiser step)
        assert torch.equal(p, eager_p[name.removeprefix("_orig_mod.")])


def test_compile_functional_op_with_channels_last_and_strided_weight() -> None:
    """The fake impl's layout (channels_last out, dense weight-grad strides) agrees with the real kernels."""
    torch._dynamo.reset()

    def fn(x, w4):
        w = w4.unflatten(1, (2, 3, 3))
        return involution.involution2d(x, w, stride=2, padding=1).relu()

    x = torch.randn(2, 8, 9, 9).contiguous(memory_format=torch.channels_last)
    w4 = torch.randn(2, 18, 5, 5).contiguous(memory_format=torch.channels_last)
    compiled = torch.compile(fn, fullgraph=True, backend="aot_eager")
    outs = []
    for f in (compiled, fn):
        xx, ww = x.clone().requires_grad_(), w4.clone().requires_grad_()
        out = f(xx, ww)
        out.sum().backward()
        outs.append((out, xx.grad, ww.grad))
    assert is_channels_last(outs[0][0])
    for a, b in zip(*outs):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_compile_inductor_matches_eager() -> None:
    """The only test with the real Inductor backend (slow when cold: it generates and builds C++).

    The model has a stride-2 layer on an odd (9x9) image, whose kernel generator average-pools with ceil_mode.
    """
    torch._dynamo.reset()
    eager = _model()
    compiled = torch.compile(copy.deepcopy(eager), fullgraph=True)
    x = torch.randn(2, 3, 9, 9)
    _compare_compiled(compiled, eager, x, rtol=1e-4, atol=1e-4)


# ---------------------------------------------------------------------------------------------- torch.export
class _Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.stem = nn.Conv2d(3, 8, 1)
        self.inv = involution.Involution2d(8, kernel_size=3, stride=2, groups=2)

    def forward(self, x):
        return self.inv(self.stem(x))


def test_export_with_dynamic_batch_and_save_load(tmp_path) -> None:
    model = _Block().eval()
    x = torch.randn(2, 3, 11, 11)
    batch = torch.export.Dim("batch", min=1, max=64)
    ep = torch.export.export(model, (x,), dynamic_shapes={"x": {0: batch}})
    targets = [node.target for node in ep.graph.nodes if node.op == "call_function"]
    assert OPS.involution2d.default in targets  # kept as one custom op, not decomposed

    with torch.no_grad():
        for n in (2, 5):
            xn = torch.randn(n, 3, 11, 11)
            expected = model(xn)
            torch.testing.assert_close(ep.module()(xn), expected, rtol=1e-5, atol=1e-5)
            ref = involution2d_reference(model.stem(xn), model.inv.generate_kernel(model.stem(xn)), 2, 1, 1)
            assert_matches_reference(expected, ref)

    path = tmp_path / "block.pt2"
    torch.export.save(ep, path)
    loaded = torch.export.load(path)
    with torch.no_grad():
        for n in (1, 3):
            xn = torch.randn(n, 3, 11, 11)
            torch.testing.assert_close(loaded.module()(xn), model(xn), rtol=1e-5, atol=1e-5)


# --------------------------------------------------------------------------------------------------- autocast
def test_autocast_bfloat16_casts_float32_inputs(backend: str) -> None:
    gen = torch.Generator().manual_seed(2)
    x, w = make_case(2, 8, 2, (3, 3), (7, 7), padding=(1, 1), generator=gen)
    x.requires_grad_()
    w.requires_grad_()
    with use_backend(backend), torch.autocast("cpu", dtype=torch.bfloat16):
        out = involution.involution2d(x, w, padding=1)
    assert out.dtype == torch.bfloat16
    expected = involution2d_reference(x.detach().bfloat16(), w.detach().bfloat16(), 1, 1, 1)
    assert_matches_reference(out, expected, dtype=torch.bfloat16)
    # gradients flow back to the float32 leaves, in float32
    with use_backend(backend):
        out.float().sum().backward()
    assert x.grad.dtype == torch.float32 and w.grad.dtype == torch.float32
    ref_gx, ref_gw = reference_grads(x.bfloat16(), w.bfloat16(), torch.ones(out.shape), 1, 1, 1)
    assert_matches_reference(x.grad, ref_gx, dtype=torch.bfloat16)
    assert_matches_reference(w.grad, ref_gw, dtype=torch.bfloat16)


def test_autocast_mixed_dtypes(backend: str) -> None:
    gen = torch.Generator().manual_seed(3)
    x, w = make_case(1, 4, 1, (3, 3), (6, 6), padding=(1, 1), generator=gen)
    w16 = w.bfloat16()
    with use_backend(backend):
        with pytest.raises(TypeError, match="same dtype"):
            involution.involution2d(x, w16, padding=1)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = involution.involution2d(x, w16, padding=1)
        with torch.autocast("cpu", dtype=torch.float16):
            out_f16 = involution.involution2d(x, w, padding=1)
    assert out.dtype == torch.bfloat16
    assert_matches_reference(out, involution2d_reference(x.bfloat16(), w16, 1, 1, 1), dtype=torch.bfloat16)
    assert out_f16.dtype == torch.float16  # the dtype in effect at call time, not one fixed at registration
    assert_matches_reference(out_f16, involution2d_reference(x.half(), w.half(), 1, 1, 1), dtype=torch.float16)


def test_autocast_under_torch_compile() -> None:
    torch._dynamo.reset()

    def fn(x, w):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return involution.involution2d(x, w, padding=1)

    x, w = make_case(1, 4, 1, (3, 3), (6, 6), padding=(1, 1))
    x.requires_grad_()
    out = torch.compile(fn, fullgraph=True, backend="aot_eager")(x, w)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out, fn(x, w), rtol=0, atol=0)
    out.float().sum().backward()
    assert x.grad.dtype == torch.float32 and torch.isfinite(x.grad).all()


def test_autocast_leaves_float64_alone() -> None:
    """As for native ops and ``torch.library.register_autocast``, autocast does not cast float64 tensors."""
    x, w = make_case(1, 4, 1, (3, 3), (6, 6), padding=(1, 1), dtype=torch.float64)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = involution.involution2d(x, w, padding=1)
        conv_out = torch.nn.functional.conv2d(x, torch.randn(4, 4, 1, 1, dtype=torch.float64))
    assert conv_out.dtype == torch.float64  # what PyTorch itself does
    assert out.dtype == torch.float64
    torch.testing.assert_close(out, involution2d_reference(x, w, 1, 1, 1), rtol=1e-10, atol=1e-10)


def test_autocast_does_not_hide_a_float64_dtype_mismatch() -> None:
    """float64 is not lowered by autocast, so float64 input + bfloat16 weight still mismatch, as without autocast.

    (Native ops agree: under CPU autocast, conv2d of a float64 input with a bfloat16 weight raises.)
    """
    x, w = make_case(1, 4, 1, (3, 3), (6, 6), padding=(1, 1), dtype=torch.float64)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        with pytest.raises(TypeError, match="same dtype"):
            involution.involution2d(x, w.bfloat16(), padding=1)
        with pytest.raises(TypeError, match="same dtype"):
            involution.involution2d(x.bfloat16(), w, padding=1)


def test_autocast_disabled_region_keeps_float32() -> None:
    x, w = make_case(1, 4, 1, (3, 3), (6, 6), padding=(1, 1))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        with torch.autocast("cpu", enabled=False):
            out = involution.involution2d(x, w, padding=1)
    assert out.dtype == torch.float32


# ---------------------------------------------------------------------------------------------- use_backend
def test_use_backend_nests_and_restores() -> None:
    assert current_backends() is None
    with use_backend("torch"):
        assert current_backends() == ("torch",)
        with use_backend(CPU_BACKENDS):
            assert current_backends() == tuple(CPU_BACKENDS)
            with use_backend(("triton", "torch")):
                assert current_backends() == ("triton", "torch")
            assert current_backends() == tuple(CPU_BACKENDS)
        assert current_backends() == ("torch",)
    assert current_backends() is None


def test_use_backend_restores_after_exception() -> None:
    with pytest.raises(KeyError):
        with use_backend("torch"):
            raise KeyError("boom")
    assert current_backends() is None
    with use_backend("torch"):
        with pytest.raises(ValueError):
            with use_backend("no-such-backend"):
                pass
        assert current_backends() == ("torch",)
    assert current_backends() is None


@pytest.mark.parametrize("names", ["no-such-backend", ["torch", "cuda-magic"], "Torch", []])
def test_use_backend_rejects_unknown_names(names) -> None:
    match = "at least one" if names == [] else "unknown involution backend"
    with pytest.raises(ValueError, match=match):
        with use_backend(names):
            pytest.fail("the with block must not be entered")
    assert current_backends() is None


def test_get_backend_unknown_name() -> None:
    with pytest.raises(ValueError, match="known backends"):
        get_backend("nope")


def test_unavailable_backend_raises_when_called() -> None:
    x, w = make_case(1, 4, 1, (3, 3), (5, 5), padding=(1, 1))
    with use_backend("triton"):  # selecting it is allowed; running a CPU tensor on it is not
        with pytest.raises(RuntimeError, match=r"triton.*cpu|cpu.*triton"):
            involution.involution2d(x, w, padding=1)
    # an ordered list falls through to the next backend that can run the call
    with use_backend(["triton", "torch"]):
        out = involution.involution2d(x, w, padding=1)
    assert_matches_reference(out, involution2d_reference(x, w, 1, 1, 1))


class _Spy:
    """Counts the kernel calls each backend receives."""

    def __init__(self, monkeypatch) -> None:
        self.calls: list[tuple[str, str]] = []
        for name in CPU_BACKENDS:
            be = get_backend(name)
            for kernel in ("forward", "backward_input", "backward_weight"):
                monkeypatch.setattr(be, kernel, self._wrap(name, kernel, getattr(be, kernel)))

    def _wrap(self, name, kernel, fn):
        def wrapper(*args, **kwargs):
            self.calls.append((name, kernel))
            return fn(*args, **kwargs)

        return wrapper


def _forward_backward() -> None:
    x, w = make_case(1, 4, 2, (3, 3), (5, 5), padding=(1, 1))
    x.requires_grad_()
    w.requires_grad_()
    involution.involution2d(x, w, padding=1).sum().backward()


def test_use_backend_routes_every_kernel_to_the_chosen_backend(backend: str, monkeypatch) -> None:
    spy = _Spy(monkeypatch)
    with use_backend(backend):
        _forward_backward()
    assert sorted(spy.calls) == sorted([(backend, "forward"), (backend, "backward_input"), (backend, "backward_weight")])


def test_automatic_choice_prefers_the_compiled_cpu_backend(monkeypatch) -> None:
    spy = _Spy(monkeypatch)
    _forward_backward()
    expected = "cpu" if "cpu" in CPU_BACKENDS else "torch"
    assert {name for name, _ in spy.calls} == {expected}
    assert len(spy.calls) == 3


def test_only_the_needed_gradient_kernels_run(backend: str, monkeypatch) -> None:
    spy = _Spy(monkeypatch)
    x, w = make_case(1, 4, 2, (3, 3), (5, 5), padding=(1, 1))
    with use_backend(backend):
        involution.involution2d(x, w.requires_grad_(), padding=1).sum().backward()
        assert spy.calls == [(backend, "forward"), (backend, "backward_weight")]
        spy.calls.clear()
        involution.involution2d(x.requires_grad_(), w.detach(), padding=1).sum().backward()
        assert spy.calls == [(backend, "forward"), (backend, "backward_input")]
        spy.calls.clear()
        with torch.no_grad():
            involution.involution2d(x, w, padding=1)
        assert spy.calls == [(backend, "forward")]


def test_use_backend_is_honoured_at_run_time_by_compiled_code(monkeypatch) -> None:
    """The backend is chosen when the op runs, so one compiled graph follows ``use_backend`` around it."""
    torch._dynamo.reset()
    x, w = make_case(1, 4, 2, (3, 3), (5, 5), padding=(1, 1))

    def fn(x, w):
        return involution.involution2d(x, w, padding=1).relu()

    compiled = torch.compile(fn, fullgraph=True, backend="aot_eager")
    compiled(x, w)  # compile outside the spy
    spy = _Spy(monkeypatch)
    for name in CPU_BACKENDS:
        spy.calls.clear()
        with use_backend(name), torch._dynamo.config.patch(error_on_recompile=True):
            out = compiled(x, w)
        assert spy.calls == [(name, "forward")]
        assert_matches_reference(out, involution2d_reference(x, w, 1, 1, 1).relu())
