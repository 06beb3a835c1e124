"""Tiny difflux classes for the hub tests, and the plugin object that registers them."""

from __future__ import annotations

import torch
from difflux import DiffusionPipeline, ModelMixin, SchedulerMixin, hookimpl
from difflux.registry import RegisterComponent, RegisterPipeline, RegisterScheduler

TOKEN = "hf_test_token"


class TinyModel(ModelMixin):
    def __init__(self, channels: int = 2, hidden: int = 3) -> None:
        super().__init__()
        self.proj = torch.nn.Linear(channels, hidden)


class TinyScheduler(SchedulerMixin):
    def __init__(self, num_train_timesteps: int = 10, beta: float = 0.5) -> None:
        pass


class TinyPipeline(DiffusionPipeline):
    _optional_components = ("extra",)

    def __init__(self, model: TinyModel, scheduler: TinyScheduler, extra: TinyModel | None = None) -> None:
        super().__init__()
        self.register_modules(model=model, scheduler=scheduler, extra=extra)


class _TestPlugin:
    @hookimpl
    def difflux_register_components(self, register: RegisterComponent) -> None:
        register(TinyModel)

    @hookimpl
    def difflux_register_schedulers(self, register: RegisterScheduler) -> None:
        register(TinyScheduler)

    @hookimpl
    def difflux_register_pipelines(self, register: RegisterPipeline) -> None:
        register(TinyPipeline)


def tiny_pipeline(seed: int = 0, extra: bool = False) -> TinyPipeline:
    torch.manual_seed(seed)
    return TinyPipeline(model=TinyModel(), scheduler=TinyScheduler(), extra=TinyModel() if extra else None)
