"""JSON round trip for the model config dataclasses (checkpoints store configs as JSON)."""
from __future__ import annotations

from dataclasses import asdict, fields
from typing import Any, Mapping, TypeVar

__all__ = ["SerializableConfig"]

C = TypeVar("C", bound="SerializableConfig")


class SerializableConfig:
    """Mixin for config dataclasses with a ``loss_weights`` field: tuples become lists, unknown keys are refused."""

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)  # type: ignore[call-overload]
        for k, v in d.items():
            if isinstance(v, tuple):
                d[k] = list(v)
        d["loss_weights"] = self.loss_weights.to_dict()  # type: ignore[attr-defined]
        return d

    @classmethod
    def from_dict(cls: type[C], data: Mapping[str, Any]) -> C:
        names = {f.name for f in fields(cls)}  # type: ignore[arg-type]
        unknown = set(data) - names
        if unknown:
            raise ValueError(f"unknown {cls.__name__} key(s): {sorted(unknown)}")
        return cls(**dict(data))
