"""``difflux generate`` and ``difflux info``: options map onto the pipeline's ``__call__``, outputs are written.

Needs the first-party pipelines, models and schedulers plugins (skipped where they are not installed).
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
import time
import wave
from pathlib import Path
from typing import Any

import difflux_pipelines_unconditional  # noqa: F401  (the plugin `generate` runs here)
import PIL.Image
import pytest
import torch
from difflux import cli
from difflux.registry import reset_registry
from difflux_models.unet_1d import UNet1DModel
from difflux_models.unet_2d import UNet2DModel
from difflux_pipelines_unconditional import DanceDiffusionPipeline, DDIMPipeline
from difflux_schedulers.ddim import DDIMScheduler
from difflux_schedulers.euler import EulerDiscreteScheduler

SCRIPT = Path(sys.executable).with_name("difflux")


@pytest.fixture(autouse=True)
def fresh_registry(monkeypatch: pytest.MonkeyPatch) -> Any:
    for var in ("DIFFLUX_LOAD_PLUGINS", "DIFFLUX_DISABLE_PLUGIN_AUTOLOAD", "DIFFLUX_TRACE_PLUGINS"):
        monkeypatch.delenv(var, raising=False)
    reset_registry()
    yield
    reset_registry()


def run(*argv: str) -> tuple[int, str]:
    out = io.StringIO()
    code = cli.main(list(argv), out=out)
    return code, out.getvalue()


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A saved 8x8 RGB DDIM pipeline with a 3-class UNet."""
    torch.manual_seed(0)
    unet = UNet2DModel(
        sample_size=8,
        in_channels=3,
        out_channels=3,
        block_out_channels=(8, 16),
        layers_per_block=1,
        norm_num_groups=4,
        down_block_types=("DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D"),
        num_class_embeds=3,
    )
    folder = tmp_path_factory.mktemp("tiny") / "pipe"
    DDIMPipeline(unet=unet, scheduler=DDIMScheduler()).save_pretrained(folder)
    return folder


# -- generate -------------------------------------------------------------------------------------


def test_generate_default_model_writes_a_grid_of_each_digit(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    target = tmp_path / "digits.png"
    code, out = run("generate", "--steps", "4", "--seed", "0", "--output", str(target))
    assert code == 0, capsys.readouterr().err
    assert "wrote 10 image(s)" in out and "DDIMPipeline" in out
    grid = PIL.Image.open(target)
    assert grid.mode == "L" and grid.size == (5 * 64, 2 * 64)  # 16 px digits, enlarged 4x, 5 per row
    assert "4/4" in capsys.readouterr().err  # the progress bar


def test_generate_is_reproducible_and_takes_a_class(tmp_path: Path) -> None:
    a, b, c = tmp_path / "a.png", tmp_path / "b.png", tmp_path / "c.png"
    common = ["--steps", "3", "--seed", "1", "--num-images", "3"]
    assert run("generate", *common, "--class-label", "7", "--output", str(a))[0] == 0
    assert run("generate", *common, "--class-label", "7", "--output", str(b))[0] == 0
    assert run("generate", *common, "--class-label", "1", "--output", str(c))[0] == 0
    assert PIL.Image.open(a).size == (3 * 64, 64)
    assert PIL.Image.open(a).tobytes() == PIL.Image.open(b).tobytes()
    assert PIL.Image.open(a).tobytes() != PIL.Image.open(c).tobytes()


def test_generate_from_a_folder_with_scheduler_alias(tiny_folder: Path, tmp_path: Path) -> None:
    target = tmp_path / "out" / "x.png"
    code, out = run(
        "generate", str(tiny_folder), "--scheduler", "DDIMScheduler", "--steps", "2", "--output", str(target)
    )
    assert code == 0
    assert "wrote 3 image(s)" in out  # one per class of a 3-class model
    assert PIL.Image.open(target).size == (3 * 64, 64)


@pytest.mark.parametrize(
    ("option", "message"),
    [
        (["--prompt", "a cat"], "--prompt does not apply to DDIMPipeline"),
        (["--guidance-scale", "3"], "--guidance-scale does not apply to DDIMPipeline"),
        (["--height", "64"], "--height does not apply to DDIMPipeline"),
        (["--scheduler", "NoSuchSampler"], "NoSuchSampler"),
    ],
)
def test_generate_refuses_options_the_pipeline_does_not_take(
    tiny_folder: Path, tmp_path: Path, option: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _ = run("generate", str(tiny_folder), *option, "--steps", "2", "--output", str(tmp_path / "x.png"))
    assert code == 1
    err = capsys.readouterr().err
    assert message in err and "difflux generate: error:" in err
    assert not (tmp_path / "x.png").exists()


def test_generate_says_when_the_folder_is_missing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _ = run("generate", str(tmp_path / "nowhere"), "--output", str(tmp_path / "x.png"))
    assert code == 1
    assert "nowhere" in capsys.readouterr().err


def test_generate_writes_audio_as_wav(tmp_path: Path) -> None:
    torch.manual_seed(0)
    unet = UNet1DModel(
        sample_size=64,
        sample_rate=16000,
        in_channels=2,
        out_channels=2,
        extra_in_channels=16,
        time_embedding_dim=16,
        block_out_channels=(32, 32, 64),
    )
    DanceDiffusionPipeline(unet=unet, scheduler=EulerDiscreteScheduler()).save_pretrained(tmp_path / "dance")
    target = tmp_path / "clip.wav"
    code, out = run("generate", str(tmp_path / "dance"), "--steps", "2", "--num-images", "2", "--output", str(target))
    assert code == 0 and "2 audio clip(s)" in out
    with wave.open(str(target)) as clip:
        assert (clip.getnchannels(), clip.getframerate(), clip.getnframes()) == (2, 16000, 128)


def test_generate_kwargs_pass_only_what_the_pipeline_takes(tiny_folder: Path) -> None:
    from difflux import DiffusionPipeline

    pipe = DiffusionPipeline.from_pretrained(tiny_folder)
    args = cli.build_parser().parse_args(["generate", "--steps", "5", "--seed", "3", "--num-images", "4"])
    kwargs = cli.generate_kwargs(pipe, args)
    assert set(kwargs) == {"num_inference_steps", "generator", "class_labels", "batch_size", "output_type"}
    assert kwargs["class_labels"] == [0, 1, 2, 0] and kwargs["batch_size"] == 4


# -- info -----------------------------------------------------------------------------------------


def test_info_lists_classes_plugins_sizes_dtypes(tiny_folder: Path) -> None:
    code, out = run("info", str(tiny_folder))
    assert code == 0
    assert out.startswith("DDIMPipeline  from difflux-pipelines-unconditional (plugin pipelines-unconditional)")
    assert "UNet2DModel" in out and "difflux-models" in out and "float32" in out
    assert "DDIMScheduler" in out and "difflux-schedulers" in out
    code, text = run("info", str(tiny_folder), "--json")
    report = json.loads(text)
    unet = next(c for c in report["components"] if c["name"] == "unet")
    assert unet["class"] == "UNet2DModel" and unet["dtypes"] == ["float32"]
    assert unet["plugin"]["distribution"] == "difflux-models"
    assert unet["parameters"] == report["parameters"] > 0


def test_info_of_the_default_model() -> None:
    code, text = run("info", "--json")
    assert code == 0
    report = json.loads(text)
    assert report["pipeline"] == "DDIMPipeline" and report["source"] == "difflux:digits"
    assert 0 < report["parameters"] < 2_500_000  # fits the 10 MB budget in float32


# -- the installed script ---------------------------------------------------------------------------


@pytest.mark.skipif(not SCRIPT.exists(), reason="the difflux script is not installed next to this Python")
def test_script_generates_the_default_grid(tmp_path: Path) -> None:
    target = tmp_path / "digits.png"
    start = time.perf_counter()
    done = subprocess.run(
        [str(SCRIPT), "generate", "--output", str(target)], capture_output=True, text=True, timeout=120
    )
    seconds = time.perf_counter() - start
    assert done.returncode == 0, done.stderr
    assert target.is_file() and "it/s" in done.stderr  # tqdm's bar went to stderr
    print(f"difflux generate took {seconds:.1f} s")


def test_default_model_name_matches_the_plugin() -> None:
    from difflux_pipelines_unconditional import plugin

    assert cli.DEFAULT_MODEL == plugin.DEFAULT_MODEL
    assert cli.DEFAULT_MODEL_DISTRIBUTION == "difflux-pipelines-unconditional"


def test_generate_without_the_plugin_names_what_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("DIFFLUX_LOAD_PLUGINS", "models,schedulers")
    reset_registry()
    code, _ = run("generate", "--output", str(tmp_path / "x.png"))
    assert code == 1
    assert "pip install difflux-pipelines-unconditional" in capsys.readouterr().err
