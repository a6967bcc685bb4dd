"""Feature levels of the residual nets: :class:`FeatureInfo` and the picking of stage indices.

Kept apart from ``_base`` so the model base stays about the network; the index rules follow timm (>= 1.0):
an int ``n`` means the last ``n`` levels, a sequence names levels (negative ones count from the end).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, cast

from .._checks import check_int


class FeatureInfo(list):
    """One dict per feature level: ``num_chs`` (channels), ``reduction`` (stride w.r.t. the input), ``module``.

    A list of those dicts (so timm's feature wrappers, which accept a list, read it as they read their own), with
    ``channels()``, ``reduction()`` and ``module_name()`` giving one field for every level (or for level ``idx``),
    as in timm.
    """

    def __init__(self, info: Sequence[dict[str, Any]] = ()) -> None:
        super().__init__(dict(d) for d in info)

    @property
    def info(self) -> list[dict[str, Any]]:
        return self

    def _field(self, key: str, idx: int | Sequence[int] | None) -> Any:
        if idx is None:
            return [d[key] for d in self]
        if isinstance(idx, int):
            return self[idx][key]
        return [self[i][key] for i in idx]

    def channels(self, idx: int | Sequence[int] | None = None) -> Any:
        return self._field("num_chs", idx)

    def reduction(self, idx: int | Sequence[int] | None = None) -> Any:
        return self._field("reduction", idx)

    def module_name(self, idx: int | Sequence[int] | None = None) -> Any:
        return self._field("module", idx)

    def get_dicts(self) -> list[dict[str, Any]]:
        return [dict(d) for d in self]

    def __repr__(self) -> str:
        return f"FeatureInfo({list(self)})"


def check_out_indices(out_indices: Sequence[int], num_stages: int = 4) -> tuple[int, ...]:
    """Validate stage indices (negative ones count from the end); returns them sorted, without repeats."""
    try:
        raw = [int(i) for i in out_indices]
    except TypeError:
        raise TypeError(f"out_indices must be a sequence of ints, got {out_indices!r}") from None
    if not raw:
        raise ValueError("out_indices must name at least one stage")
    picked = []
    for i in raw:
        if not -num_stages <= i < num_stages:
            raise ValueError(f"out_indices must lie in [0, {num_stages}), got {tuple(raw)}")
        picked.append(i % num_stages)
    return tuple(sorted(set(picked)))


def take_indices(indices: int | Sequence[int] | None, default: Sequence[int], num_stages: int = 4) -> tuple[int, ...]:
    """The stage indices ``indices`` picks, sorted (timm's ``forward_intermediates`` convention).

    ``None``: ``default``; an int ``n``: the last ``n`` stages (1 <= n <= num_stages); a sequence: those stages,
    negative ones counting from the end.
    """
    if indices is None:
        return check_out_indices(default, num_stages)
    if isinstance(indices, int) and not isinstance(indices, bool):
        n = check_int("indices (the last n stages)", indices, low=1, high=num_stages)
        return tuple(range(num_stages - n, num_stages))
    return check_out_indices(cast(Sequence[int], indices), num_stages)  # (a bool: check_out_indices' TypeError)
