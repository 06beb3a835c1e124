"""Shared test set-up for the schedulers plugin.

Parity helpers live in ``scheduler_parity.py`` next to this file. pytest runs with
``--import-mode=importlib``, so this conftest puts the tests folder on ``sys.path``; test
modules then import the helpers directly::

    from scheduler_parity import assert_parity, assert_config_interop, run_loop

- ``assert_parity(MyScheduler, config, num_inference_steps=10, timesteps=None, sigmas=None,
  step_kwargs=None, seed=0)`` runs a whole sampling loop with a deterministic stand-in model
  in difflux and in Diffusers (same class name, same config), and asserts equal timesteps and
  final samples within 1e-5 (fp32). Stochastic samplers get the same seeded generator.
- ``assert_config_interop(MyScheduler, config, tmp_path)`` checks a difflux-written
  ``scheduler_config.json`` loads in Diffusers with the same config, and the other way.
- The ``parity`` fixture gives the same module, for those who prefer fixtures.
"""

from __future__ import annotations

import sys
from pathlib import Path
from types import ModuleType

import pytest

_HERE = str(Path(__file__).resolve().parent)
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)

import scheduler_parity  # noqa: E402


@pytest.fixture
def parity() -> ModuleType:
    """The :mod:`scheduler_parity` helpers."""
    return scheduler_parity
