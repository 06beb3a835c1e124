"""docs/quickstart.md runs as pasted: its Python blocks in order in one namespace, its ``difflux``
commands through the installed script, all in an empty folder, on the embedded models.

Each file a snippet says it writes (``--output NAME``, ``.save("NAME")``, ``save_pretrained("NAME")``)
must then exist and be a real image or pipeline folder.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = ROOT / "docs" / "quickstart.md"
SCRIPT = Path(sys.executable).with_name("difflux")

pytest.importorskip("difflux_stable_diffusion")
pytest.importorskip("difflux_pipelines_unconditional")


def _blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", QUICKSTART.read_text(encoding="utf-8"), re.DOTALL)


def _commands() -> list[list[str]]:
    """The ``difflux ...`` lines of the bash blocks (``pip install`` lines are the reader's to run)."""
    lines = [line.strip() for block in _blocks("bash") for line in block.splitlines()]
    return [shlex.split(line, comments=True) for line in lines if line.startswith("difflux ")]


def test_the_quickstart_has_runnable_snippets() -> None:
    commands = _commands()
    assert [c[1] for c in commands][:2] == ["plugins", "generate"], "the page starts with the CLI"
    assert any("--prompt" in c for c in commands) and any(c[1] == "info" for c in commands)
    code = "\n".join(_blocks("python"))
    for needed in ("difflux:digits-text2img", "difflux:digits", "resolve_scheduler", "save_pretrained"):
        assert needed in code


@pytest.mark.slow  # five fresh processes, each importing torch (about 20 s on a quiet 2-core machine)
@pytest.mark.skipif(not SCRIPT.exists(), reason="the difflux script is not installed next to this Python")
def test_cli_snippets_run_as_pasted(tmp_path: Path) -> None:
    import PIL.Image

    for command in _commands():
        run = subprocess.run([str(SCRIPT), *command[1:]], cwd=tmp_path, capture_output=True, text=True, timeout=300)
        assert run.returncode == 0, f"{shlex.join(command)} failed: {run.stderr}"
        if "--output" in command:
            written = tmp_path / command[command.index("--output") + 1]
            with PIL.Image.open(written) as image:
                assert image.size[0] >= 16 and image.getextrema() != ((0, 0),) * len(image.getbands())
        if command[1] == "info":
            assert "StableDiffusionPipeline" in run.stdout and "CLIPTextModel" in run.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        c[c.index("--output") + 1] for c in _commands() if "--output" in c
    ), "the CLI wrote only where it was asked to"


def test_python_snippets_run_as_pasted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import PIL.Image

    monkeypatch.chdir(tmp_path)
    namespace: dict[str, object] = {"__name__": "__quickstart__"}
    for block in _blocks("python"):
        exec(compile(block, str(QUICKSTART), "exec"), namespace)
    code = "\n".join(_blocks("python"))
    for name in re.findall(r'\.save\("([^"]+)"\)', code):
        with PIL.Image.open(tmp_path / name) as image:
            assert image.size == (16, 16)
    for name in re.findall(r'save_pretrained\("([^"]+)"\)', code):
        assert (tmp_path / name / "model_index.json").is_file()
        assert list((tmp_path / name / "unet").glob("*.safetensors"))


def test_readme_folder_table_lists_every_distribution() -> None:
    """Each folder with a pyproject.toml (core, hub, every plugin) has its row, with its distribution name."""
    import tomllib

    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    rows = dict(re.findall(r"^\| `([^`]+)/` \| `([^`]+)` \|", readme, re.MULTILINE))
    folders = [ROOT / "core", ROOT / "hub", *sorted((ROOT / "plugins").iterdir())]
    for folder in folders:
        if (folder / "pyproject.toml").is_file():
            name = tomllib.loads((folder / "pyproject.toml").read_text())["project"]["name"]
            assert rows.get(str(folder.relative_to(ROOT))) == name, f"README's folder table misses {folder.name}"


def test_install_hints_name_the_checkout_folder() -> None:
    """Every first-party distribution's install hint says ``pip install NAME`` and the checkout folder
    (``pip install -e ./plugins/<name>``) that holds it, since it may not be on the package index."""
    import tomllib

    from difflux._providers import install_hint

    folders = [ROOT / "core", ROOT / "hub", *sorted((ROOT / "plugins").iterdir())]
    for folder in folders:
        if (folder / "pyproject.toml").is_file():
            name = tomllib.loads((folder / "pyproject.toml").read_text())["project"]["name"]
            hint = install_hint(name)
            assert hint.startswith(f"pip install {name} ") and f"pip install -e ./{folder.relative_to(ROOT)}" in hint
    assert install_hint("not-difflux") == "pip install not-difflux"
