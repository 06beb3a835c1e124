"""The plugin author's experience: component_loaded for lone loads, the providers table, the
``difflux_registry`` fixture and the ``difflux[testing]`` extra."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import pytest
import torch
from difflux import DiffusionPipeline, ModelMixin, SchedulerMixin, _providers, hookimpl
from difflux.registry import get_registry, reset_registry
from difflux.testing import IsolatedRegistry

ROOT = Path(__file__).resolve().parents[2]

# -- difflux_component_loaded sees lone models and schedulers with name="" ---------------------------


class LoneModel(ModelMixin):
    def __init__(self, width: int = 2) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(width, width)


class LoneScheduler(SchedulerMixin):
    def __init__(self, beta: float = 0.5) -> None:
        pass


class LonePipeline(DiffusionPipeline):
    def __init__(self, model: LoneModel, scheduler: LoneScheduler) -> None:
        super().__init__()
        self.register_modules(model=model, scheduler=scheduler)


class Observer:
    def __init__(self, replace: bool = False) -> None:
        self.seen: list[tuple[str, str]] = []
        self.replace = replace

    @hookimpl
    def difflux_register_pipelines(self, register: Any) -> None:
        register(LonePipeline)

    @hookimpl
    def difflux_register_components(self, register: Any) -> None:
        register(LoneModel)

    @hookimpl
    def difflux_register_schedulers(self, register: Any) -> None:
        register(LoneScheduler)

    @hookimpl
    def difflux_component_loaded(self, name: str, component: Any) -> Any:
        self.seen.append((name, type(component).__name__))
        if self.replace and isinstance(component, LoneScheduler):
            return LoneScheduler(beta=0.25)
        return None


def test_component_loaded_fires_for_lone_models_and_schedulers_with_an_empty_name(
    difflux_registry: IsolatedRegistry, tmp_path: Path
) -> None:
    observer = Observer()
    difflux_registry.use(("observer", observer))
    LoneModel().save_pretrained(tmp_path / "model")
    LoneScheduler().save_pretrained(tmp_path / "scheduler")
    LoneModel.from_pretrained(tmp_path / "model")
    model, info = LoneModel.from_pretrained(tmp_path / "model", output_loading_info=True)
    assert isinstance(model, LoneModel) and info["missing_keys"] == []
    LoneScheduler.from_pretrained(tmp_path / "scheduler")
    LoneScheduler.from_pretrained(tmp_path, subfolder="scheduler")
    assert observer.seen == [("", "LoneModel"), ("", "LoneModel"), ("", "LoneScheduler"), ("", "LoneScheduler")]


def test_inside_a_pipeline_each_component_is_seen_once_under_its_name(
    difflux_registry: IsolatedRegistry, tmp_path: Path
) -> None:
    observer = Observer()
    difflux_registry.use(("observer", observer))
    LonePipeline(model=LoneModel(), scheduler=LoneScheduler()).save_pretrained(tmp_path)
    DiffusionPipeline.from_pretrained(tmp_path)
    assert sorted(observer.seen) == [("model", "LoneModel"), ("scheduler", "LoneScheduler")]


def test_a_replacement_from_component_loaded_is_what_a_lone_load_returns(
    difflux_registry: IsolatedRegistry, tmp_path: Path
) -> None:
    difflux_registry.use(("observer", Observer(replace=True)))
    LoneScheduler(beta=0.75).save_pretrained(tmp_path)
    assert LoneScheduler.from_pretrained(tmp_path).config.beta == 0.25


# -- core's _providers table is what the first-party distributions really register -------------------


def _workspace_distributions() -> dict[str, Path]:
    """Distribution name -> folder, for every first-party distribution in the workspace."""
    found = {}
    for pyproject in [ROOT / "hub" / "pyproject.toml", *sorted((ROOT / "plugins").glob("*/pyproject.toml"))]:
        found[tomllib.loads(pyproject.read_text())["project"]["name"]] = pyproject.parent
    return found


def _registered_by_distribution() -> dict[str, set[str]]:
    """Class names each installed distribution registers (pipelines, components but transformers ones, schedulers)."""
    reset_registry()
    try:
        registry = get_registry()
        dist_of = {name: info.distribution for name, info in registry.plugins.items()}
        by_dist: dict[str, set[str]] = {}
        regs = [*registry.pipelines.values(), *registry.schedulers.values()]
        regs += [reg for (library, _), reg in registry.components.items() if library != "transformers"]
        for reg in regs:
            if reg.name not in registry.scheduler_aliases:
                by_dist.setdefault(dist_of[reg.plugin], set()).add(reg.name)
        return by_dist
    finally:
        reset_registry()


@pytest.fixture(scope="module")
def registered() -> dict[str, set[str]]:
    import os

    saved = {
        k: os.environ.pop(k) for k in ("DIFFLUX_LOAD_PLUGINS", "DIFFLUX_DISABLE_PLUGIN_AUTOLOAD") if k in os.environ
    }
    try:
        return _registered_by_distribution()
    finally:
        os.environ.update(saved)


def test_every_distribution_in_the_providers_table_exists_in_the_workspace() -> None:
    workspace = _workspace_distributions()
    unknown = sorted(set(_providers._BY_DISTRIBUTION) - set(workspace))
    assert not unknown, f"_providers names distributions that do not exist here: {unknown}"


@pytest.mark.parametrize("dist", sorted(_providers._BY_DISTRIBUTION))
def test_providers_table_names_only_what_the_installed_distribution_registers(
    dist: str, registered: dict[str, set[str]]
) -> None:
    if dist not in registered:
        pytest.skip(f"{dist} is not installed in this environment")
    listed = set(_providers._BY_DISTRIBUTION[dist])
    assert not listed - registered[dist], (
        f"_providers lists for {dist} what it does not register: {listed - registered[dist]}"
    )
    assert not registered[dist] - listed, f"{dist} registers what _providers does not list: {registered[dist] - listed}"


def test_providers_table_has_no_name_twice() -> None:
    names = [n for names in _providers._BY_DISTRIBUTION.values() for n in names]
    assert len(names) == len(set(names)), sorted({n for n in names if names.count(n) > 1})


# -- difflux.testing: the fixture and the extra -----------------------------------------------------


def test_the_fixture_isolates_the_registry_and_restores_it(difflux_registry: IsolatedRegistry) -> None:
    assert set(difflux_registry.registry.plugins) == {"difflux"}
    registry = difflux_registry.use(("observer", Observer()))
    assert registry is get_registry()
    assert set(registry.plugins) == {"difflux", "observer"}
    assert registry.pipeline_class("LonePipeline") is LonePipeline


def test_the_fixture_is_a_pytest_plugin_of_the_difflux_distribution() -> None:
    found = [ep for ep in entry_points(group="pytest11") if ep.value == "difflux.testing.fixtures"]
    assert [ep.dist.name for ep in found if ep.dist] == ["difflux"]


def test_difflux_testing_declares_its_needs_as_an_extra() -> None:
    project = tomllib.loads((ROOT / "core" / "pyproject.toml").read_text())["project"]
    testing = project["optional-dependencies"]["testing"]
    assert any(re.match(r"pytest\b", dep) for dep in testing)
    sources = "\n".join(p.read_text() for p in (ROOT / "core/src/difflux/testing").glob("*.py"))
    imported = set(re.findall(r"^(?:import|from) (\w+)", sources, re.MULTILINE)) - {"__future__"}
    stdlib = set(sys.stdlib_module_names)
    runtime = {re.split(r"[<>=!~ \[;]", d, maxsplit=1)[0] for d in project["dependencies"]}
    needs = {m for m in imported if m not in stdlib} - {"difflux"}
    assert needs <= runtime | {"pytest", "numpy", "PIL"} | {re.split(r"[<>=!~ \[;]", d)[0] for d in testing}


def test_importing_the_fixtures_imports_no_torch() -> None:
    code = "import sys, difflux.testing.fixtures, difflux.testing; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
