"""Activation functions by the names Diffusers configs use."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

__all__ = ["get_activation"]

_ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "swish": nn.SiLU,
    "silu": nn.SiLU,
    "mish": nn.Mish,
    "gelu": nn.GELU,
    "relu": nn.ReLU,
}


def get_activation(name: str) -> nn.Module:
    """A fresh activation module for a config name (``"silu"``, ``"swish"``, ``"mish"``, ``"gelu"``, ``"relu"``)."""
    try:
        return _ACTIVATIONS[name.lower()]()
    except KeyError:
        raise ValueError(f"unknown activation {name!r}; expected one of {sorted(_ACTIVATIONS)}") from None
