"""A third-party plugin found through its entry point, in a real, fresh virtual environment.

The new venv sees this venv's packages (torch, difflux ...) through a ``.pth`` file that calls
``site.addsitedir`` on our site-packages, so the editable installs' own ``.pth`` files are
processed too and nothing heavy is reinstalled. Then, in subprocesses of the new venv:

(a) without ``difflux-fixture-plugin``, loading a folder that names its classes fails with an
    error naming the class and the distribution to install;
(b) after ``pip install`` of the fixture, the same call loads the fixture's classes and runs.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import textwrap
from pathlib import Path

FIXTURE = Path(__file__).parent / "fixtures" / "difflux-fixture-plugin"
DIST = "difflux-fixture-plugin"

def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DIFFLUX_", "PYTHON", "PIP_"))}
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    return env


def _run(python: Path | str, script: str, **extra_env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(python), "-c", textwrap.dedent(script)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**_env(), **extra_env},
    )


def _make_venv(root: Path) -> Path:
    """A venv whose ``.pth`` makes this venv's site-packages (and their ``.pth`` files) visible."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(root)], check=True, timeout=60)
    python = root / "bin" / "python"
    site_packages = Path(
        subprocess.run(
            [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            capture_output=True, text=True, check=True, timeout=60, env=_env(),
        ).stdout.strip()
    )
    parent = sysconfig.get_paths()["purelib"]
    (site_packages / "_difflux_parent_venv.pth").write_text(f"import site; site.addsitedir({parent!r})\n")
    return python


def _write_folder(folder: Path, *, with_plugin_key: bool) -> None:
    """A pipeline folder naming the fixture's classes; components saved by the fixture's own code."""
    saved = _run(
        sys.executable,
        f"""
        import torch
        from difflux_fixture_plugin import FixtureDenoiser, FixtureScheduler
        torch.manual_seed(0)
        FixtureDenoiser(channels=3).save_pretrained({str(folder / "denoiser")!r})
        FixtureScheduler(shrink=0.25).save_pretrained({str(folder / "scheduler")!r})
        """,
        PYTHONPATH=str(FIXTURE / "src"),
        PYTHONDONTWRITEBYTECODE="1",
    )
    assert saved.returncode == 0, saved.stderr
    index: dict[str, object] = {
        "_class_name": "FixturePipeline",
        "_diffusers_version": "0.42.1",
        "denoiser": ["diffusers", "FixtureDenoiser"],
        "scheduler": ["diffusers", "FixtureScheduler"],
    }
    if with_plugin_key:
        index["_difflux_plugins"] = {name: DIST for name in ("FixturePipeline", "FixtureDenoiser", "FixtureScheduler")}
    (folder / "model_index.json").write_text(json.dumps(index, indent=2))


LOAD_FAILS = """
import json, sys
from difflux import DiffusionPipeline, UnknownClassError, get_registry
plugins = sorted(p.distribution for p in get_registry().plugins.values())
errors = []
for folder in sys.argv[1:]:
    try:
        DiffusionPipeline.from_pretrained(folder)
    except UnknownClassError as exc:
        errors.append(str(exc))
print(json.dumps({"plugins": plugins, "errors": errors}))
"""

LOAD_RUNS = """
import json, sys
import torch
from safetensors.torch import load_file
from difflux import DiffusionPipeline, get_registry
folder, out = sys.argv[1], sys.argv[2]
pipe = DiffusionPipeline.from_pretrained(folder)
pipe.set_progress_bar_config(disable=True)
weights = load_file(folder + "/denoiser/diffusion_pytorch_model.safetensors")
same_weights = all(torch.equal(pipe.denoiser.state_dict()[k], v) for k, v in weights.items())
a = pipe(batch_size=2, generator=torch.Generator().manual_seed(0)).images
b = pipe(batch_size=2, generator=torch.Generator().manual_seed(0)).images
c = pipe(batch_size=2, generator=torch.Generator().manual_seed(1)).images
pipe.save_pretrained(out)
fixture = get_registry().plugins["fixture"]
print(json.dumps({
    "classes": {n: f"{type(c).__module__}.{type(c).__name__}" for n, c in {"pipe": pipe, **pipe.components}.items()},
    "plugin": [fixture.distribution, fixture.version, fixture.module],
    "shrink": pipe.scheduler.config.shrink,
    "same_weights": same_weights,
    "shape": list(a.shape),
    "deterministic": bool(torch.equal(a, b)),
    "seed_matters": not bool(torch.equal(a, c)),
    "grad_fn": a.grad_fn is not None,
    "saved_index": json.load(open(out + "/model_index.json")),
}))
"""


def test_plugin_entry_point_in_a_fresh_venv(tmp_path: Path) -> None:
    python = _make_venv(tmp_path / "venv")
    with_key, without_key = tmp_path / "with-key", tmp_path / "without-key"
    _write_folder(with_key, with_plugin_key=True)
    _write_folder(without_key, with_plugin_key=False)

    # (a) the plugin is not installed: the error names the class and what to install
    before = subprocess.run(
        [str(python), "-c", LOAD_FAILS, str(with_key), str(without_key)],
        capture_output=True, text=True, timeout=120, env=_env(),
    )
    assert before.returncode == 0, before.stderr
    result = json.loads(before.stdout)
    assert DIST not in result["plugins"]
    named, unnamed = result["errors"]
    assert "FixturePipeline" in named and f"pip install {DIST}" in named
    assert "FixturePipeline" in unnamed and DIST not in unnamed and "difflux plugins" in unnamed

    # (b) pip install the fixture (from a copy, so the build leaves nothing in the repository)
    source = tmp_path / "src" / DIST
    shutil.copytree(FIXTURE, source, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    install = subprocess.run(
        [str(python), "-m", "pip", "install", "--no-build-isolation", "--no-deps", "--quiet", str(source)],
        capture_output=True, text=True, timeout=180, env=_env(),
    )
    assert install.returncode == 0, install.stdout + install.stderr
    site_packages = next((tmp_path / "venv" / "lib").glob("python*/site-packages"))
    assert (site_packages / "difflux_fixture_plugin" / "plugin.py").is_file(), "not installed into the new venv"

    after = subprocess.run(
        [str(python), "-c", LOAD_RUNS, str(with_key), str(tmp_path / "resaved")],
        capture_output=True, text=True, timeout=120, env=_env(),
    )
    assert after.returncode == 0, after.stderr
    got = json.loads(after.stdout)
    assert got["classes"] == {
        "pipe": "difflux_fixture_plugin.FixturePipeline",
        "denoiser": "difflux_fixture_plugin.FixtureDenoiser",
        "scheduler": "difflux_fixture_plugin.FixtureScheduler",
    }
    assert got["plugin"] == [DIST, "0.0.1", "difflux_fixture_plugin.plugin"]
    assert got["shrink"] == 0.25 and got["same_weights"]
    assert got["shape"] == [2, 3]
    assert got["deterministic"] and got["seed_matters"] and not got["grad_fn"]
    index = got["saved_index"]
    assert index["_class_name"] == "FixturePipeline"
    assert index["denoiser"] == ["diffusers", "FixtureDenoiser"]
    assert index["scheduler"] == ["diffusers", "FixtureScheduler"]
    assert index["_difflux_plugins"] == {n: DIST for n in ("FixturePipeline", "FixtureDenoiser", "FixtureScheduler")}
