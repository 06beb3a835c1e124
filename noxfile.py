"""Every dev task of the difflux workspace (`nox -l` lists them)."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import nox

nox.options.default_venv_backend = "venv"
nox.options.sessions = ["tests", "lint"]

ROOT = Path(__file__).parent
TORCH = "torch==2.13.0"
PLUGINS = sorted(p.name for p in (ROOT / "plugins").iterdir() if (p / "pyproject.toml").exists())


def _local_folders(folder: str) -> list[str]:
    """``folder`` and, recursively, the workspace folders of the difflux distributions it depends on."""
    by_name = {"difflux": "core", "difflux-hub": "hub", **{f"difflux-{p}": f"plugins/{p}" for p in PLUGINS}}
    project = tomllib.loads((ROOT / folder / "pyproject.toml").read_text())["project"]
    # a plugin's "test" extra names the difflux distributions its tests use as oracles (difflux-flax)
    deps = [*project["dependencies"], *project.get("optional-dependencies", {}).get("test", [])]
    found: list[str] = []
    for dep in deps:
        name = re.split(r"[<>=!~ \[;]", dep, maxsplit=1)[0].lower()
        if name in by_name:
            found += [f for f in _local_folders(by_name[name]) if f not in found]
    return [*found, folder]


@nox.session
def demo(session: nox.Session) -> None:
    """Install difflux with its plugins and run the main job."""
    session.install(TORCH, "-r", "requirements.txt")
    session.run("difflux", "plugins")


@nox.session
def tests(session: nox.Session) -> None:
    """The whole test suite (what CI runs)."""
    session.install(TORCH, "-r", "requirements-test.txt")
    session.run("python", "-m", "pytest", "-n", "2", "-q", *session.posargs)


@nox.session(name="tests-slow", default=False)
def tests_slow(session: nox.Session) -> None:
    """The whole test suite including tests marked slow."""
    session.install(TORCH, "-r", "requirements-test.txt")
    session.run("python", "-m", "pytest", "-n", "2", "-q", "--run-slow", *session.posargs)


@nox.session(default=False)
@nox.parametrize("plugin", PLUGINS)
def plugin(session: nox.Session, plugin: str) -> None:
    """One plugin alone: core plus that plugin and the difflux plugins it declares, then its own tests."""
    editable = [arg for folder in _local_folders(f"plugins/{plugin}") for arg in ("-e", folder)]
    session.install(TORCH, *editable, "pytest", "diffusers==0.42.1", "transformers", "scipy", "scikit-learn")
    session.run("python", "-m", "pytest", "-q", f"plugins/{plugin}/tests", *session.posargs)


@nox.session(name="audio-oracle", default=False)
def audio_oracle(session: nox.Session) -> None:
    """Diffusers 0.42.1 on transformers 4 (<4.50): write plugins/audio/tests/data/reference_tf4.safetensors."""
    editable = [arg for folder in _local_folders("plugins/audio") for arg in ("-e", folder)]
    # transformers<4.50: from 4.50 GPT2Model has no generation helpers, which Diffusers 0.42.1 calls
    session.install(TORCH, *editable, "transformers<4.50", "librosa", "scipy", "safetensors")
    # diffusers 0.42.1 needs huggingface_hub>=1.32, which transformers 4 declares it does not take: install
    # both anyway (pip warns); the oracle script lets transformers 4 import over hub 1.x
    session.install("huggingface_hub>=1.32,<2")
    session.install("--no-deps", "diffusers==0.42.1")
    session.run("python", "plugins/audio/tests/oracle_tf4.py")


@nox.session(default=False)
def parity(session: nox.Session) -> None:
    """Only the parity tests against Diffusers."""
    session.install(TORCH, "-r", "requirements-test.txt")
    session.run("python", "-m", "pytest", "-n", "2", "-q", "-k", "parity or diffusers", *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    """ruff on everything."""
    session.install("ruff")
    session.run("ruff", "check", ".")


@nox.session(default=False)
def typecheck(session: nox.Session) -> None:
    """mypy (strict) on every src/ folder."""
    session.install(TORCH, "-r", "requirements-test.txt", "mypy")
    srcs = ["core/src", *(f"plugins/{p}/src" for p in PLUGINS)]
    session.run("mypy", *srcs)


@nox.session(default=False)
def bench(session: nox.Session) -> None:
    """Benchmarks: difflux against Diffusers in the same run, printed as ratios."""
    session.install(TORCH, "-r", "requirements-test.txt", "psutil")
    scripts = session.posargs or sorted(str(p) for p in (ROOT / "bench").glob("bench_*.py"))
    for script in scripts:
        session.run("python", script)


@nox.session(default=False)
def docs(session: nox.Session) -> None:
    """Build the docs with MkDocs in strict mode."""
    session.install(TORCH, "-r", "requirements.txt", "mkdocs", "mkdocs-material", "mkdocstrings[python]")
    session.run("mkdocs", "build", "--strict", "--site-dir", str(ROOT / "site"))
