"""Conformance kits: base test classes that plugin test suites subclass.

First-party and third-party plugins use the same kits::

    from difflux.testing import SchedulerConformance

    class TestMyScheduler(SchedulerConformance):
        scheduler_class = MyScheduler
        ...
"""

from __future__ import annotations

from .component import ComponentConformance
from .pipeline import PipelineConformance
from .scheduler import SchedulerConformance

__all__ = ["ComponentConformance", "PipelineConformance", "SchedulerConformance"]
