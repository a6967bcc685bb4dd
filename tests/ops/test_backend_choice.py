"""The op asks ``select_backend`` on every call, so the choice is remembered per (device, dtypes, ``use_backend``
names) rather than made afresh (issue 28): a remembered choice asks no backend again, anything else does."""

from __future__ import annotations

import pytest
import torch

from involution.ops import list_backends, use_backend
from involution.ops.backends import get_backend, register_backend, select_backend
from involution.ops.backends.base import CHOICES
from op_helpers import make_case


def _spy_on_can_run(monkeypatch) -> list[str]:
    """Every backend's can_run recorded and answering "no": a fresh choice then fails, a remembered one does not."""
    asked: list[str] = []
    for name in list_backends():
        monkeypatch.setattr(get_backend(name), "can_run", lambda i, w, _name=name: asked.append(_name) or "spied on")
    return asked


def test_choice_is_remembered_per_device_dtypes_and_names(monkeypatch) -> None:
    CHOICES.clear()  # what earlier tests made the op remember (float64 among it) is not this test's to see
    x, w = make_case(1, 4, 2, (3, 3), (5, 5), padding=(1, 1))
    chosen = select_backend(x, w)
    with use_backend("torch"):
        assert select_backend(x, w).name == "torch"
    asked = _spy_on_can_run(monkeypatch)

    assert select_backend(x, w) is chosen and select_backend(x.clone(), w.clone()) is chosen
    with use_backend("torch"):
        assert select_backend(x, w).name == "torch"
    assert asked == []

    with pytest.raises(RuntimeError, match="spied on"):  # other dtypes: asked afresh
        select_backend(x.double(), w.double())
    with use_backend(list_backends()), pytest.raises(RuntimeError, match="spied on"):  # other names: likewise
        select_backend(x, w)
    assert sorted(set(asked)) == list_backends()


def test_registering_a_backend_forgets_the_choices(monkeypatch) -> None:
    x, w = make_case(1, 4, 2, (3, 3), (5, 5), padding=(1, 1), dtype=torch.float64)
    select_backend(x, w)
    asked = _spy_on_can_run(monkeypatch)
    register_backend(get_backend("torch"))
    with pytest.raises(RuntimeError, match="spied on"):
        select_backend(x, w)
    assert asked
