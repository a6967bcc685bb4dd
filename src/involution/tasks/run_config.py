"""What every run configuration dataclass can do: become a dict / JSON (``config.json``) and come back from one."""

from __future__ import annotations

import dataclasses
import json
from typing import Any, TypeVar

C = TypeVar("C", bound="RunConfig")


class RunConfig:
    """Mixin for the ``@dataclass`` configs of training runs (:class:`~involution.tasks.classification.TrainConfig`,
    :class:`~involution.tasks.dense.DenseConfig`)."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)  # type: ignore[call-overload]

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls: type[C], values: dict[str, Any]) -> C:
        """The config of ``values``; unknown keys are an error that lists the known ones."""
        known = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown training options {unknown}; known: {sorted(known)}")
        return cls(**values)
