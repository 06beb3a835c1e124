"""Small torch helpers shared by schedulers and pipelines."""

from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = ["randn_tensor"]


def randn_tensor(
    shape: Sequence[int],
    generator: torch.Generator | Sequence[torch.Generator] | None = None,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Standard normal noise, reproducible across devices.

    Noise is drawn on the generator's device and then moved, so a CPU generator gives the same
    numbers whatever ``device`` is. With a list of generators, sample ``i`` of the batch is drawn
    from generator ``i`` (the list must have one generator per batch element).
    """
    device = torch.device(device) if device is not None else torch.device("cpu")
    shape = tuple(shape)
    if generator is None:
        return torch.randn(shape, device=device, dtype=dtype)
    if isinstance(generator, torch.Generator):
        return torch.randn(shape, generator=generator, device=generator.device, dtype=dtype).to(device)
    gens = list(generator)
    if len(gens) != shape[0]:
        raise ValueError(f"got {len(gens)} generators for a batch of {shape[0]}; pass one per sample")
    parts = [torch.randn((1, *shape[1:]), generator=g, device=g.device, dtype=dtype) for g in gens]
    return torch.cat(parts).to(device)
