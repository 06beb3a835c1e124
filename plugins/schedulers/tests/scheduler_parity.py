"""Parity helpers: run the same sampling loop in difflux and in Diffusers (the test-only oracle)."""

from __future__ import annotations

import inspect
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "PARITY_ATOL",
    "PARITY_RTOL",
    "SHAPE",
    "assert_config_interop",
    "assert_parity",
    "diffusers_class",
    "run_loop",
    "stand_in_model",
]

#: absolute tolerance of every parity check against Diffusers: float32 rounding only. A drift of 1e-5
#: (e.g. LMS coefficients integrated exactly instead of as Diffusers does) fails it.
PARITY_ATOL = 2e-6
#: relative tolerance on top (samples are O(1-10)): a few float32 ulps
PARITY_RTOL = 1e-6

#: latent shape of the parity loops: tiny, so the whole grid runs in seconds on one core
SHAPE: tuple[int, ...] = (2, 4, 8, 8)


def stand_in_model(sample: torch.Tensor, timestep: Any) -> torch.Tensor:
    """A fixed, smooth, timestep-dependent stand-in for a denoiser (deterministic).

    Mostly "the input is the noise", so samples shrink to O(1) as a real denoiser's would.
    """
    t = float(timestep.float().mean()) if isinstance(timestep, torch.Tensor) else float(timestep)
    return 0.9 * sample + 0.1 * torch.tanh(sample * 2.0 + t / 250.0)


def diffusers_class(name: str) -> Any:
    import diffusers

    return getattr(diffusers, name)


def _accepts(fn: Any, name: str) -> bool:
    params = inspect.signature(fn).parameters
    return name in params or any(p.kind is p.VAR_KEYWORD for p in params.values())


def run_loop(
    scheduler: Any,
    num_inference_steps: int | None = 10,
    *,
    timesteps: Sequence[Any] | None = None,
    sigmas: Sequence[float] | None = None,
    seed: int = 0,
    shape: tuple[int, ...] = SHAPE,
    step_kwargs: Mapping[str, Any] | None = None,
    model: Any = stand_in_model,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Set the schedule, then denoise seeded noise to the end; returns (timesteps, final sample).

    Works for difflux and Diffusers schedulers alike: ``generator`` and custom schedules are
    passed only where ``step`` / ``set_timesteps`` accept them.
    """
    set_kwargs: dict[str, Any] = {}
    if timesteps is not None:
        set_kwargs["timesteps"] = list(timesteps)
    if sigmas is not None:
        set_kwargs["sigmas"] = list(sigmas)
    if set_kwargs:
        scheduler.set_timesteps(**set_kwargs)
    else:
        scheduler.set_timesteps(num_inference_steps)
    init = torch.randn(shape, generator=torch.Generator().manual_seed(seed))
    sample = init * scheduler.init_noise_sigma
    step_gen = torch.Generator().manual_seed(seed + 1)
    kwargs = dict(step_kwargs or {})
    if _accepts(scheduler.step, "generator"):
        kwargs["generator"] = step_gen
    for t in scheduler.timesteps:
        model_in = scheduler.scale_model_input(sample, t)
        out = scheduler.step(model(model_in, t), t, sample, **kwargs)
        sample = out.prev_sample
    return scheduler.timesteps.clone(), sample


def assert_parity(
    difflux_cls: type,
    config: Mapping[str, Any] | None = None,
    num_inference_steps: int | None = 10,
    *,
    timesteps: Sequence[Any] | None = None,
    sigmas: Sequence[float] | None = None,
    step_kwargs: Mapping[str, Any] | None = None,
    seed: int = 0,
    atol: float = PARITY_ATOL,
    rtol: float = PARITY_RTOL,
    check_dtype: bool = True,
    diffusers_name: str | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Assert difflux and Diffusers give the same timesteps and final sample; returns difflux's."""
    config = dict(config or {})
    ours = difflux_cls(**config)
    theirs = diffusers_class(diffusers_name or difflux_cls.__name__)(**config)
    loop = {"timesteps": timesteps, "sigmas": sigmas, "seed": seed, "step_kwargs": step_kwargs}
    t_ours, x_ours = run_loop(ours, num_inference_steps, **loop)  # type: ignore[arg-type]
    t_theirs, x_theirs = run_loop(theirs, num_inference_steps, **loop)  # type: ignore[arg-type]
    where = f"{difflux_cls.__name__}({config}), steps={num_inference_steps}"
    assert t_ours.shape == t_theirs.shape, f"{where}: {t_ours.tolist()} != {t_theirs.tolist()}"
    if check_dtype:
        assert t_ours.dtype == t_theirs.dtype, f"{where}: timesteps dtype {t_ours.dtype} != {t_theirs.dtype}"
    assert torch.equal(t_ours.double(), t_theirs.double()), f"{where}: {t_ours.tolist()} != {t_theirs.tolist()}"
    assert x_ours.dtype == x_theirs.dtype, f"{where}: sample dtype {x_ours.dtype} != {x_theirs.dtype}"
    assert torch.isfinite(x_theirs).all(), f"{where}: the Diffusers reference is not finite"
    torch.testing.assert_close(x_ours, x_theirs, atol=atol, rtol=rtol, msg=lambda m: f"{where}: {m}")
    return t_ours, x_ours


def _comparable(config: Mapping[str, Any]) -> dict[str, Any]:
    data = json.loads(json.dumps(dict(config), default=lambda v: v.tolist() if hasattr(v, "tolist") else str(v)))
    return {k: v for k, v in data.items() if not k.startswith("_")}


def assert_config_interop(difflux_cls: Any, config: Mapping[str, Any] | None, tmp_path: Path) -> None:
    """A difflux-written ``scheduler_config.json`` loads in Diffusers, and a Diffusers-written one in difflux."""
    config = dict(config or {})
    ref_cls: Any = diffusers_class(difflux_cls.__name__)
    ours = difflux_cls(**config)
    ours.save_pretrained(tmp_path / "difflux")
    theirs = ref_cls.from_pretrained(tmp_path / "difflux")
    ours_cfg, theirs_cfg = _comparable(ours.config), _comparable(theirs.config)
    for key, value in ours_cfg.items():
        assert key in theirs_cfg and theirs_cfg[key] == value, f"Diffusers read {key}={theirs_cfg.get(key)!r}"

    ref = ref_cls(**config)
    ref.save_pretrained(tmp_path / "diffusers")
    back = difflux_cls.from_pretrained(tmp_path / "diffusers")
    back_cfg, ref_cfg = _comparable(back.config), _comparable(ref.config)
    for key, value in ref_cfg.items():
        assert back_cfg.get(key) == value, f"difflux read {key}={back_cfg.get(key)!r}, Diffusers wrote {value!r}"
    assert set(ours_cfg) <= set(ref_cfg), f"difflux writes keys Diffusers does not: {set(ours_cfg) - set(ref_cfg)}"
