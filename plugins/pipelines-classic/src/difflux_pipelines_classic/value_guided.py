"""Value-guided planning with a trajectory diffusion model (Janner et al. 2022, "Planning with Diffusion for
Flexible Behavior Synthesis" (Diffuser), arXiv:2205.09991, sec. 3.3 "guided sampling").

A ``UNet1DModel`` denoises whole trajectories ``(batch, horizon, action_dim + state_dim)``; before
each denoising step the trajectory is moved ``n_guide_steps`` times along the gradient of a learned
value function (a second ``UNet1DModel``, scaled by the reverse step's standard deviation), and the
first state is pinned to the current observation. The plan with the highest value gives the action.

The environment is any object with the small interface of :class:`PlanningEnvironment` (a
``gym`` environment with a D4RL dataset has it); no ``gym`` dependency.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any, ClassVar, Protocol, runtime_checkable

import numpy as np
import torch
from difflux import DiffusionPipeline
from difflux.torch_utils import randn_tensor

__all__ = ["PlanningEnvironment", "ValueGuidedRLPipeline"]


class _Space(Protocol):
    shape: tuple[int, ...]


@runtime_checkable
class PlanningEnvironment(Protocol):
    """What the planner needs from an environment.

    ``observation_space.shape[0]`` / ``action_space.shape[0]``: the state and action sizes;
    ``get_dataset()``: a mapping with at least ``"observations"`` ``(N, state_dim)`` and ``"actions"``
    ``(N, action_dim)`` arrays; their scalar mean and standard deviation normalise observations and
    de-normalise actions (other array entries are ignored).
    """

    observation_space: _Space
    action_space: _Space

    def get_dataset(self) -> Mapping[str, Any]: ...


def _moments(data: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    means: dict[str, Any] = {}
    stds: dict[str, Any] = {}
    for key, value in data.items():
        try:
            means[key], stds[key] = value.mean(), value.std()
        except (AttributeError, TypeError, ValueError):
            continue  # entries without statistics (metadata) are not used
    return means, stds


class ValueGuidedRLPipeline(DiffusionPipeline):
    """Plan an action for an observation: sample trajectories guided by ``value_function``, return the best
    plan's first action.

    Components: ``value_function`` and ``unet`` (``UNet1DModel``), ``scheduler`` (``DDPMScheduler``), and
    ``env`` (a :class:`PlanningEnvironment`; pass it to ``from_pretrained(..., env=env)``).

    :raises TypeError: for an ``env`` without the interface.
    :raises KeyError: when its dataset lacks ``"observations"`` or ``"actions"``.
    """

    model_cpu_offload_seq = "value_function->unet"
    _optional_components: ClassVar[tuple[str, ...]] = ("env",)

    value_function: Any
    unet: Any
    scheduler: Any
    env: Any

    def __init__(self, value_function: Any, unet: Any, scheduler: Any, env: Any = None) -> None:
        super().__init__()
        if env is not None and not isinstance(env, PlanningEnvironment):
            raise TypeError(
                "ValueGuidedRLPipeline: env needs observation_space.shape, action_space.shape and get_dataset() "
                f"(see PlanningEnvironment); got {type(env).__name__}"
            )
        self.register_modules(value_function=value_function, unet=unet, scheduler=scheduler, env=env)
        self.means: dict[str, Any] = {}
        self.stds: dict[str, Any] = {}
        if env is not None:
            self.data = env.get_dataset()
            self.means, self.stds = _moments(self.data)
            for key in ("observations", "actions"):
                if key not in self.means:
                    raise KeyError(f"ValueGuidedRLPipeline: env.get_dataset() needs a numeric {key!r} array")
            self.state_dim = int(env.observation_space.shape[0])
            self.action_dim = int(env.action_space.shape[0])

    def save_pretrained(self, save_directory: str | os.PathLike[str], **kwargs: Any) -> Any:
        """Save the models and the scheduler; ``env`` is written as ``[null, null]``, as Diffusers does (an
        environment is not a file: pass it again to ``from_pretrained(..., env=env)``)."""
        env = self.env
        self.register_modules(env=None)
        try:
            return super().save_pretrained(save_directory, **kwargs)
        finally:
            self.register_modules(env=env)

    def normalize(self, x_in: Any, key: str) -> Any:
        """``(x - mean) / std`` with the dataset's statistics of ``key``."""
        return (x_in - self.means[key]) / self.stds[key]

    def de_normalize(self, x_in: Any, key: str) -> Any:
        """``x * std + mean`` with the dataset's statistics of ``key``."""
        return x_in * self.stds[key] + self.means[key]

    def reset_x0(self, x_in: torch.Tensor, cond: Mapping[int, torch.Tensor], act_dim: int) -> torch.Tensor:
        """Pin the states at the given horizon positions (``{0: observation}``) in ``x_in``."""
        for position, state in cond.items():
            x_in[:, position, act_dim:] = state.clone()
        return x_in

    def guide(
        self, x: torch.Tensor, t: torch.Tensor, timesteps: torch.Tensor, scale: float
    ) -> tuple[torch.Tensor, Any]:
        """One value-gradient step: ``x + scale * std_t * d value / d x`` (no move at the last two timesteps)."""
        with torch.enable_grad():
            x = x.detach().requires_grad_()
            value = self.value_function(x.permute(0, 2, 1), timesteps).sample
            grad = torch.autograd.grad([value.sum()], [x])[0]
        std = torch.exp(0.5 * self.scheduler.posterior_variance(t))
        grad = std * grad
        grad[timesteps < 2] = 0
        return x.detach() + scale * grad, value

    def run_diffusion(
        self,
        x: torch.Tensor,
        conditions: Mapping[int, torch.Tensor],
        n_guide_steps: int,
        scale: float,
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, Any]:
        """The guided reverse process over every training timestep (as the published planner runs);
        returns the trajectories and their last values ``(batch, 1)``."""
        self.scheduler.set_timesteps(int(self.scheduler.config.num_train_timesteps), device=x.device)
        value = None
        for t in self.progress_bar(self.scheduler.timesteps):
            timesteps = torch.full((x.shape[0],), int(t), device=x.device, dtype=torch.long)
            for _ in range(n_guide_steps):
                x, value = self.guide(x, t, timesteps, scale)
                x = self.reset_x0(x, conditions, self.action_dim)
            prediction = self.unet(x.permute(0, 2, 1), timesteps).sample.permute(0, 2, 1)
            x = self.scheduler.step(prediction, t, x, generator=generator).prev_sample
            x = self.reset_x0(x, conditions, self.action_dim)
        return x, value

    def __call__(
        self,
        obs: Any,
        batch_size: int = 64,
        planning_horizon: int = 32,
        n_guide_steps: int = 2,
        scale: float = 0.1,
        *,
        generator: torch.Generator | None = None,
    ) -> np.ndarray:
        """The action ``(action_dim,)`` (de-normalised) to take at observation ``obs`` ``(state_dim,)``.

        :param batch_size: trajectories sampled; the one the value function rates highest is used.
        :param planning_horizon: steps per trajectory (the UNet's sequence length).
        :param n_guide_steps: value-gradient steps before each denoising step (0: unguided, a random plan).
        :param scale: the size of each value-gradient step.
        :param generator: for the initial noise and the scheduler's noise (default: torch's global RNG).
        :raises ValueError | TypeError: for bad input, before any model runs.
        """
        name = type(self).__name__
        if self.env is None:
            raise ValueError(f"{name}: no env; pass env= (a PlanningEnvironment) when loading or constructing")
        state = np.asarray(obs, dtype=np.float64)
        if state.shape != (self.state_dim,) or not np.isfinite(state).all():
            raise ValueError(
                f"{name}: obs must be {self.state_dim} finite numbers (one observation), got {state.shape}"
            )
        for key, value, low in (("batch_size", batch_size, 1), ("planning_horizon", planning_horizon, 1),
                                ("n_guide_steps", n_guide_steps, 0)):  # fmt: skip
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{name}: {key} must be an int >= {low}, got {value!r}")
        if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not np.isfinite(scale):
            raise ValueError(f"{name}: scale must be a finite number, got {scale!r}")
        obs_in = np.repeat(self.normalize(state, "observations")[None], batch_size, axis=0)
        conditions = {0: torch.tensor(obs_in, device=self.unet.device)}
        shape = (batch_size, planning_horizon, self.state_dim + self.action_dim)
        x = randn_tensor(shape, generator=generator, device=self.unet.device)
        x = self.reset_x0(x, conditions, self.action_dim)
        x, value = self.run_diffusion(x, conditions, n_guide_steps, scale, generator)
        if value is None:  # unguided: no value to rank by, any plan will do
            pick = int(torch.randint(0, batch_size, (1,), generator=generator).item())
            actions = x[pick, 0, : self.action_dim]
        else:
            best = value.argsort(0, descending=True).squeeze()
            actions = x[best][:, :, : self.action_dim][0, 0]
        plan = actions.detach().cpu().numpy()
        return np.asarray(self.de_normalize(plan, "actions"))
