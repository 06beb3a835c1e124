"""Activation functions by the names Diffusers configs use."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["activate_fresh", "get_activation", "grad_needed", "hooked"]

_ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "swish": nn.SiLU,
    "silu": nn.SiLU,
    "mish": nn.Mish,
    "gelu": nn.GELU,
    "relu": nn.ReLU,
}

# Activations with an in-place form, by exact module type (a subclass may change forward).
_IN_PLACE: dict[type[nn.Module], Callable[..., torch.Tensor]] = {nn.SiLU: F.silu, nn.Mish: F.mish, nn.ReLU: F.relu}


def get_activation(name: str) -> nn.Module:
    """A fresh activation module for a config name (``"silu"``, ``"swish"``, ``"mish"``, ``"gelu"``, ``"relu"``)."""
    try:
        return _ACTIVATIONS[name.lower()]()
    except KeyError:
        raise ValueError(f"unknown activation {name!r}; expected one of {sorted(_ACTIVATIONS)}") from None


def grad_needed(x: torch.Tensor) -> bool:
    """Whether autograd records operations on ``x`` (then keep ops out of place)."""
    return torch.is_grad_enabled() and x.requires_grad


def hooked(*modules: nn.Module) -> bool:
    """Whether forward hooks may see (and keep) what these modules return: then their outputs
    must not be overwritten."""
    if getattr(nn.modules.module, "_global_forward_hooks", None):
        return True
    return any(m._forward_hooks or m._forward_pre_hooks for m in modules)


def activate_fresh(act: nn.Module, x: torch.Tensor, source: nn.Module) -> torch.Tensor:
    """``act(x)`` for an ``x`` that ``source`` (a norm) just returned and nothing else holds.

    Without autograd or hooks, SiLU / Mish / ReLU overwrite ``x`` instead of allocating the
    result: the same values, but a large activation (128 MB for a 128-channel 512x512 map) costs
    page faults to allocate, as much as the activation itself.
    """
    fn = _IN_PLACE.get(type(act))
    if fn is None or grad_needed(x) or hooked(act, source):
        out: torch.Tensor = act(x)
        return out
    return fn(x, inplace=True)
