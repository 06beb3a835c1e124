"""difflux-schedulers: the Diffusers samplers (DDPM, DDIM, Euler, DPM-Solver++, UniPC ...) for difflux.

Scheduler classes are imported lazily on first attribute access, so ``import difflux_schedulers``
stays cheap; ``difflux.get_registry().scheduler_class("EulerDiscreteScheduler")`` is the usual way in.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = [
    "CMStochasticIterativeScheduler",
    "DDIMInverseScheduler",
    "DDIMParallelScheduler",
    "DDIMScheduler",
    "DDPMParallelScheduler",
    "DDPMScheduler",
    "DDPMWuerstchenScheduler",
    "DEISMultistepScheduler",
    "DPMSolverMultistepScheduler",
    "DPMSolverSinglestepScheduler",
    "EDMEulerScheduler",
    "EulerAncestralDiscreteScheduler",
    "EulerDiscreteScheduler",
    "FlowMatchEulerDiscreteScheduler",
    "HeunDiscreteScheduler",
    "KDPM2AncestralDiscreteScheduler",
    "KDPM2DiscreteScheduler",
    "KarrasVeScheduler",
    "LCMScheduler",
    "LMSDiscreteScheduler",
    "PNDMScheduler",
    "ScoreSdeVeScheduler",
    "UnCLIPScheduler",
    "UniPCMultistepScheduler",
    "VQDiffusionScheduler",
]


def __getattr__(name: str) -> Any:
    from .plugin import SCHEDULERS

    for ref in SCHEDULERS:
        module, _, cls = ref.partition(":")
        if cls == name:
            value = getattr(importlib.import_module(module), name)
            globals()[name] = value
            return value
    raise AttributeError(f"module 'difflux_schedulers' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
