"""The contracts between pipelines, schedulers and components (``typing.Protocol``).

Every argument is stated, so a pipeline never probes a scheduler's signature.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, Self, runtime_checkable

if TYPE_CHECKING:
    import torch

    from .schedulers import SchedulerOutput

__all__ = ["Component", "Pipeline", "Scheduler"]


@runtime_checkable
class Component(Protocol):
    """Anything a pipeline holds that saves to and loads from a folder."""

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike[str], **kwargs: Any) -> Self: ...

    def save_pretrained(self, save_directory: str | os.PathLike[str], **kwargs: Any) -> Any: ...


@runtime_checkable
class Scheduler(Protocol):
    """A sampler: holds the timestep schedule and takes one denoising step at a time."""

    config: Mapping[str, Any]
    #: model evaluations per timestep (2 for Heun-style samplers)
    order: int
    #: standard deviation of the initial noise
    init_noise_sigma: float
    #: the schedule set by ``set_timesteps``
    timesteps: torch.Tensor

    def set_timesteps(
        self,
        num_inference_steps: int | None = None,
        device: str | torch.device | None = None,
        *,
        timesteps: Sequence[int] | None = None,
        sigmas: Sequence[float] | None = None,
    ) -> None: ...

    def scale_model_input(self, sample: torch.Tensor, timestep: float | torch.Tensor) -> torch.Tensor: ...

    def step(
        self,
        model_output: torch.Tensor,
        timestep: float | torch.Tensor,
        sample: torch.Tensor,
        *,
        eta: float = 0.0,
        generator: torch.Generator | list[torch.Generator] | None = None,
        return_dict: bool = True,
    ) -> SchedulerOutput | tuple[torch.Tensor, ...]: ...

    def add_noise(
        self, original_samples: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor
    ) -> torch.Tensor: ...

    def set_begin_index(self, begin_index: int = 0) -> None: ...


@runtime_checkable
class Pipeline(Protocol):
    """A runnable set of components, saved as a folder with ``model_index.json``."""

    @property
    def components(self) -> dict[str, Any]: ...

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike[str], **kwargs: Any) -> Self: ...

    def save_pretrained(self, save_directory: str | os.PathLike[str], **kwargs: Any) -> Path: ...

    def __call__(self, *args: Any, **kwargs: Any) -> Any: ...
