"""Entry point of the Flax plugin: registers its classes as lazy references (imports neither JAX nor torch)."""

from __future__ import annotations

from difflux import hookimpl
from difflux.registry import RegisterScheduler

_PKG = "difflux_flax"

#: every Flax scheduler class, as a lazy reference
SCHEDULERS: tuple[str, ...] = tuple(
    f"{_PKG}.schedulers:{name}"
    for name in (
        "FlaxDDIMScheduler",
        "FlaxDDPMScheduler",
        "FlaxPNDMScheduler",
        "FlaxLMSDiscreteScheduler",
        "FlaxEulerDiscreteScheduler",
        "FlaxDPMSolverMultistepScheduler",
    )
)


@hookimpl
def difflux_register_schedulers(register: RegisterScheduler) -> None:
    for ref in SCHEDULERS:
        register(ref)
