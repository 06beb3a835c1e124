"""The plugin's registration, alias table and scheduler swapping."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import difflux
import pytest
import torch
from difflux_schedulers.aliases import SAMPLER_ALIASES
from difflux_schedulers.ddim import DDIMScheduler
from difflux_schedulers.plugin import SCHEDULERS

ISSUE_CLASSES = {
    "DDPMScheduler", "DDIMScheduler", "DDIMInverseScheduler", "PNDMScheduler", "LMSDiscreteScheduler",
    "EulerDiscreteScheduler", "EulerAncestralDiscreteScheduler", "HeunDiscreteScheduler", "KDPM2DiscreteScheduler",
    "KDPM2AncestralDiscreteScheduler", "DPMSolverMultistepScheduler", "DPMSolverSinglestepScheduler",
    "UniPCMultistepScheduler", "DEISMultistepScheduler", "LCMScheduler", "KarrasVeScheduler", "ScoreSdeVeScheduler",
    "CMStochasticIterativeScheduler", "FlowMatchEulerDiscreteScheduler", "EDMEulerScheduler",
    "UnCLIPScheduler", "DDPMWuerstchenScheduler", "VQDiffusionScheduler",
    "DDPMParallelScheduler", "DDIMParallelScheduler",
}  # fmt: skip


def _importable(name: str) -> bool:
    try:
        difflux.get_registry().scheduler_class(name)
    except Exception:
        return False
    return True


def test_every_issue_class_is_registered() -> None:
    registry = difflux.get_registry()
    assert set(registry.schedulers) >= ISSUE_CLASSES
    assert {ref.rpartition(":")[2] for ref in SCHEDULERS} == ISSUE_CLASSES
    for name in ISSUE_CLASSES:
        assert registry.schedulers[name].plugin == "schedulers"


def test_loading_the_plugin_imports_no_torch() -> None:
    code = (
        "import sys, difflux; r = difflux.get_registry(); "
        "assert 'DDIMScheduler' in r.schedulers and 'DPM++ 2M Karras' in r.scheduler_aliases; "
        "print('torch' in sys.modules)"
    )
    env = {**os.environ, "DIFFLUX_LOAD_PLUGINS": "schedulers"}  # this plugin alone
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
    assert out.stdout.strip() == "False", out.stderr


def test_alias_resolves_case_insensitively() -> None:
    registry = difflux.get_registry()
    if not _importable("DPMSolverMultistepScheduler"):
        pytest.skip("DPMSolverMultistepScheduler is not written yet")
    cls, overrides = registry.resolve_scheduler("dpm++ 2m KARRAS")
    assert cls.__name__ == "DPMSolverMultistepScheduler"
    assert overrides == {"use_karras_sigmas": True}
    cls, overrides = registry.resolve_scheduler("Euler a")
    assert cls.__name__ == "EulerAncestralDiscreteScheduler" and overrides == {}


def test_every_alias_names_a_registered_class() -> None:
    registry = difflux.get_registry()
    assert set(SAMPLER_ALIASES) == set(registry.scheduler_aliases)
    for alias, (name, overrides) in SAMPLER_ALIASES.items():
        assert name in registry.schedulers, alias
        assert registry.scheduler_aliases[alias].scheduler == name
        assert dict(registry.scheduler_aliases[alias].overrides) == dict(overrides)


@pytest.mark.parametrize("alias", sorted(SAMPLER_ALIASES))
def test_every_alias_builds_a_working_scheduler(alias: str) -> None:
    name = SAMPLER_ALIASES[alias][0]
    if not _importable(name):
        pytest.skip(f"{name} is not written yet")
    cls, overrides = difflux.get_registry().resolve_scheduler(alias)
    scheduler = cls.from_config(DDIMScheduler(beta_schedule="scaled_linear").config, **overrides)
    for key, value in overrides.items():
        assert scheduler.config[key] == value
    scheduler.set_timesteps(4)
    assert len(scheduler.timesteps) >= 4


def test_web_ui_names_are_covered() -> None:
    names = {a.casefold() for a in SAMPLER_ALIASES}
    for wanted in ["DDIM", "Euler", "Euler a", "Heun", "LMS", "LMS Karras", "DPM2", "DPM2 a", "DPM2 Karras",
                   "DPM2 a Karras", "DPM++ 2M", "DPM++ 2M Karras", "DPM++ 2M SDE", "DPM++ 2M SDE Karras",
                   "DPM++ SDE", "DPM++ 2S a", "UniPC", "DEIS", "LCM", "PNDM", "DDPM"]:  # fmt: skip
        assert wanted.casefold() in names, wanted


def test_karras_family_is_mutually_compatible() -> None:
    registry = difflux.get_registry()
    family = {"DDIMScheduler", "DDPMScheduler", "PNDMScheduler", "LMSDiscreteScheduler", "EulerDiscreteScheduler",
              "EulerAncestralDiscreteScheduler", "HeunDiscreteScheduler", "KDPM2DiscreteScheduler",
              "KDPM2AncestralDiscreteScheduler"}  # fmt: skip
    for name in family:
        cls = registry.scheduler_class(name)
        assert family <= set(cls._compatibles), name
        assert {c.__name__ for c in cls.compatible_classes()} >= family


def test_swap_to_dpm_solver_from_ddim_config() -> None:
    if not _importable("DPMSolverMultistepScheduler"):
        pytest.skip("DPMSolverMultistepScheduler is not written yet")
    dpm_cls = difflux.get_registry().scheduler_class("DPMSolverMultistepScheduler")
    ddim = DDIMScheduler(
        beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, prediction_type="v_prediction"
    )
    dpm = dpm_cls.from_config(ddim.config)
    for key in ("beta_schedule", "beta_start", "beta_end", "prediction_type", "num_train_timesteps"):
        assert dpm.config[key] == ddim.config[key]
    assert torch.allclose(dpm.alphas_cumprod, ddim.alphas_cumprod)
    dpm.set_timesteps(5)
    assert len(dpm.timesteps) == 5


def test_swap_from_a_diffusers_config_file_with_extra_keys(tmp_path: Path) -> None:
    # the scheduler_config.json of a Stable Diffusion 1.5 checkpoint, as Diffusers writes it
    data = {
        "_class_name": "PNDMScheduler", "_diffusers_version": "0.6.0", "beta_end": 0.012,
        "beta_schedule": "scaled_linear", "beta_start": 0.00085, "num_train_timesteps": 1000,
        "set_alpha_to_one": False, "skip_prk_steps": True, "steps_offset": 1, "trained_betas": None,
        "clip_sample": False,
    }  # fmt: skip
    (tmp_path / "scheduler_config.json").write_text(json.dumps(data))
    registry = difflux.get_registry()
    names = ["EulerDiscreteScheduler", "DDIMScheduler", "LMSDiscreteScheduler", "KDPM2DiscreteScheduler"]
    if _importable("DPMSolverMultistepScheduler"):
        names.append("DPMSolverMultistepScheduler")
    for name in names:
        cls = registry.scheduler_class(name)
        scheduler = cls.from_pretrained(tmp_path)
        assert scheduler.config["beta_schedule"] == "scaled_linear"
        assert scheduler.config["steps_offset"] == 1
        scheduler.set_timesteps(5)
        assert isinstance(scheduler.timesteps, torch.Tensor)
