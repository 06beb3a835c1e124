"""HelloScheduler: where your sampler goes.

It builds on DDIM from ``difflux-schedulers``, which brings the plumbing every scheduler needs
(timesteps, ``set_begin_index``, ``step_index``, the errors the scheduler contract names). Override
``step`` (and ``__init__`` for new config keys) with your own maths; the conformance kit in
``tests/test_conformance.py`` checks the contract either way.
"""

from __future__ import annotations

from difflux_schedulers.ddim import DDIMScheduler

__all__ = ["HelloScheduler"]


class HelloScheduler(DDIMScheduler):
    """Deterministic DDIM steps (Song et al. 2021, eq. 12 with eta = 0), under its own class name."""
