"""Output objects: dataclasses that also behave like Diffusers' ``BaseOutput`` (an ordered mapping of the
fields that are not ``None``): ``out.images``, ``out["images"]``, ``out[0]``, ``keys()`` / ``values()`` /
``items()``, ``"images" in out``, ``to_tuple()``."""

from __future__ import annotations

import dataclasses
from collections.abc import ItemsView, Iterator
from typing import Any

__all__ = ["BaseOutput"]


@dataclasses.dataclass
class BaseOutput:
    """Base of every output dataclass. Fields that are ``None`` are left out of the tuple view."""

    def to_tuple(self) -> tuple[Any, ...]:
        """The values of the fields that are not ``None``, in field order."""
        return tuple(getattr(self, name) for name in self.keys())

    def keys(self) -> list[str]:
        """The names of the fields that are not ``None``, in field order.

        A field declared with ``metadata={"view": False}`` (an attribute such as an audio output's
        ``sample_rate``) is left out of the tuple and mapping views; read it as an attribute.
        """
        return [
            f.name
            for f in dataclasses.fields(self)
            if f.metadata.get("view", True) and getattr(self, f.name) is not None
        ]

    def values(self) -> list[Any]:
        """The field values that are not ``None`` (the same as :meth:`to_tuple`, as a list)."""
        return list(self.to_tuple())

    def items(self) -> ItemsView[str, Any]:
        """``(name, value)`` of the fields that are not ``None``."""
        return {name: getattr(self, name) for name in self.keys()}.items()

    def get(self, key: str, default: Any = None) -> Any:
        """The value of field ``key`` if it is set (not ``None``), else ``default``."""
        return getattr(self, key) if key in self.keys() else default

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and key in self.keys()

    def __getitem__(self, key: int | slice | str) -> Any:
        """By name (``KeyError`` for an unknown or ``None`` field) or by position / slice among the set fields."""
        if isinstance(key, str):
            if key not in self.keys():
                raise KeyError(key)
            return getattr(self, key)
        return self.to_tuple()[key]

    def __iter__(self) -> Iterator[Any]:
        return iter(self.to_tuple())

    def __len__(self) -> int:
        return len(self.to_tuple())
