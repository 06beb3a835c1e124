"""Sampler names of the popular web UIs, mapped to a scheduler class and its config overrides.

A1111 / Forge names (``"DPM++ 2M Karras"``) and ComfyUI names (``"dpmpp_2m"``); look-ups through
:meth:`difflux.registry.Registry.resolve_scheduler` ignore case. Plain data: importing this
module imports no torch.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

__all__ = ["SAMPLER_ALIASES", "aliases_by_scheduler"]

_KARRAS: Mapping[str, Any] = MappingProxyType({"use_karras_sigmas": True})
_SDE: Mapping[str, Any] = MappingProxyType({"algorithm_type": "sde-dpmsolver++"})

#: alias -> (Diffusers scheduler class name, config overrides)
SAMPLER_ALIASES: Mapping[str, tuple[str, Mapping[str, Any]]] = MappingProxyType(
    {
        # A1111 / Forge
        "DDIM": ("DDIMScheduler", {}),
        "DDPM": ("DDPMScheduler", {}),
        "PNDM": ("PNDMScheduler", {}),
        "PLMS": ("PNDMScheduler", {"skip_prk_steps": True}),
        "LMS": ("LMSDiscreteScheduler", {}),
        "LMS Karras": ("LMSDiscreteScheduler", _KARRAS),
        "Euler": ("EulerDiscreteScheduler", {}),
        "Euler Karras": ("EulerDiscreteScheduler", _KARRAS),
        "Euler a": ("EulerAncestralDiscreteScheduler", {}),
        "Heun": ("HeunDiscreteScheduler", {}),
        "Heun Karras": ("HeunDiscreteScheduler", _KARRAS),
        "DPM2": ("KDPM2DiscreteScheduler", {}),
        "DPM2 Karras": ("KDPM2DiscreteScheduler", _KARRAS),
        "DPM2 a": ("KDPM2AncestralDiscreteScheduler", {}),
        "DPM2 a Karras": ("KDPM2AncestralDiscreteScheduler", _KARRAS),
        "DPM++ 2M": ("DPMSolverMultistepScheduler", {}),
        "DPM++ 2M Karras": ("DPMSolverMultistepScheduler", _KARRAS),
        "DPM++ 2M SDE": ("DPMSolverMultistepScheduler", _SDE),
        "DPM++ 2M SDE Karras": ("DPMSolverMultistepScheduler", {**_SDE, **_KARRAS}),
        "DPM++ 3M SDE": ("DPMSolverMultistepScheduler", {**_SDE, "solver_order": 3}),
        "DPM++ 3M SDE Karras": ("DPMSolverMultistepScheduler", {**_SDE, "solver_order": 3, **_KARRAS}),
        # Diffusers has no "DPM++ 2S a"; its singlestep DPM-Solver++ is the closest.
        "DPM++ 2S a": ("DPMSolverSinglestepScheduler", {}),
        "DPM++ 2S a Karras": ("DPMSolverSinglestepScheduler", _KARRAS),
        # "DPM++ SDE" is a stochastic singlestep second-order sampler.
        "DPM++ SDE": ("DPMSolverSinglestepScheduler", _SDE),
        "DPM++ SDE Karras": ("DPMSolverSinglestepScheduler", {**_SDE, **_KARRAS}),
        "UniPC": ("UniPCMultistepScheduler", {}),
        "UniPC Karras": ("UniPCMultistepScheduler", _KARRAS),
        "DEIS": ("DEISMultistepScheduler", {}),
        "LCM": ("LCMScheduler", {}),
        # ComfyUI sampler names (those not equal to an A1111 name above, ignoring case)
        "euler_ancestral": ("EulerAncestralDiscreteScheduler", {}),
        "dpm_2": ("KDPM2DiscreteScheduler", {}),
        "dpm_2_ancestral": ("KDPM2AncestralDiscreteScheduler", {}),
        "dpmpp_2m": ("DPMSolverMultistepScheduler", {}),
        "dpmpp_2m_sde": ("DPMSolverMultistepScheduler", _SDE),
        "dpmpp_3m_sde": ("DPMSolverMultistepScheduler", {**_SDE, "solver_order": 3}),
        "dpmpp_sde": ("DPMSolverSinglestepScheduler", _SDE),
        "uni_pc": ("UniPCMultistepScheduler", {}),
    }
)


def aliases_by_scheduler() -> dict[str, dict[str, dict[str, Any]]]:
    """``{scheduler class name: {alias: overrides}}``, the shape ``register(aliases=...)`` takes."""
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for alias, (scheduler, overrides) in SAMPLER_ALIASES.items():
        out.setdefault(scheduler, {})[alias] = dict(overrides)
    return out
