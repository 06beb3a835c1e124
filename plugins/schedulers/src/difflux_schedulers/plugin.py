"""Entry point of the schedulers plugin: registers every scheduler class through the difflux hooks.

Classes are registered as lazy ``"module:Class"`` references, so loading the plugin imports
neither torch nor the scheduler modules; a class is imported when first looked up.
"""

from __future__ import annotations

import difflux
from difflux.registry import RegisterScheduler

from .aliases import aliases_by_scheduler

__all__ = ["SCHEDULERS", "difflux_register_schedulers"]

_PKG = "difflux_schedulers"

#: every scheduler class the plugin provides, as a lazy reference
SCHEDULERS: tuple[str, ...] = (
    f"{_PKG}.ddpm:DDPMScheduler",
    f"{_PKG}.ddim:DDIMScheduler",
    f"{_PKG}.ddim:DDIMInverseScheduler",
    f"{_PKG}.pndm:PNDMScheduler",
    f"{_PKG}.lms:LMSDiscreteScheduler",
    f"{_PKG}.euler:EulerDiscreteScheduler",
    f"{_PKG}.euler:EulerAncestralDiscreteScheduler",
    f"{_PKG}.heun:HeunDiscreteScheduler",
    f"{_PKG}.kdpm2:KDPM2DiscreteScheduler",
    f"{_PKG}.kdpm2:KDPM2AncestralDiscreteScheduler",
    f"{_PKG}.dpm_solver:DPMSolverMultistepScheduler",
    f"{_PKG}.dpm_solver:DPMSolverSinglestepScheduler",
    f"{_PKG}.unipc:UniPCMultistepScheduler",
    f"{_PKG}.deis:DEISMultistepScheduler",
    f"{_PKG}.lcm:LCMScheduler",
    f"{_PKG}.parallel:DDPMParallelScheduler",
    f"{_PKG}.parallel:DDIMParallelScheduler",
    f"{_PKG}.flow_match:FlowMatchEulerDiscreteScheduler",
    f"{_PKG}.edm:EDMEulerScheduler",
    f"{_PKG}.karras_ve:KarrasVeScheduler",
    f"{_PKG}.score_sde_ve:ScoreSdeVeScheduler",
    f"{_PKG}.consistency:CMStochasticIterativeScheduler",
    f"{_PKG}.unclip:UnCLIPScheduler",
    f"{_PKG}.wuerstchen:DDPMWuerstchenScheduler",
    f"{_PKG}.vq_diffusion:VQDiffusionScheduler",
)


@difflux.hookimpl
def difflux_register_schedulers(register: RegisterScheduler) -> None:
    aliases = aliases_by_scheduler()
    for ref in SCHEDULERS:
        name = ref.rpartition(":")[2]
        register(ref, aliases=aliases.get(name))
