"""Entry point of the optimize plugin: registers the first-party fast path (importing this module imports no torch)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from difflux import hookimpl

if TYPE_CHECKING:  # difflux.optimize imports torch; building the registry must not
    from difflux.optimize import RegisterOptimization


@hookimpl
def difflux_register_optimizations(register: RegisterOptimization) -> None:
    """Register the allocator check, channels-last, fused projections, bf16 autocast, regional compile, CUDA graphs."""
    register("cpu_allocator", "difflux_optimize.layout:cpu_allocator", order=0, devices=("cpu",))
    register("channels_last", "difflux_optimize.layout:channels_last", order=100)
    register("fuse_qkv", "difflux_optimize.layout:fuse_qkv", order=200)
    register(
        "cpu_bf16_autocast", "difflux_optimize.layout:cpu_bf16_autocast", order=300, modes=("max",), devices=("cpu",)
    )
    register("regional_compile", "difflux_optimize.regional:regional_compile", order=500, group="compiler")
    register("cuda_graphs", "difflux_optimize.graphs:cuda_graphs", order=900, modes=("max",), devices=("cuda",))
