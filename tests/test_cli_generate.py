"""``difflux generate`` and ``difflux info``: options map onto the pipeline's ``__call__``, outputs are written.

Needs the first-party pipelines, models and schedulers plugins (skipped where they are not installed).
"""

from __future__ import annotations

import functools
import io
import json
import os
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
    assert code == 2  # a usage error, found before the pipeline runs
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
    err = capsys.readouterr().err
    # installed here, but left out by DIFFLUX_LOAD_PLUGINS: say that, not "pip install"
    assert "pip install" not in err
    assert "difflux-pipelines-unconditional, which is installed" in err
    assert "add 'pipelines-unconditional' to DIFFLUX_LOAD_PLUGINS" in err


# -- options checked before the model loads: one line, naming the flag, exit status 2 ---------------


def _never_load(*args: Any, **kwargs: Any) -> Any:
    raise AssertionError("the model was loaded before the options were checked")


def _bad_options(tmp_path: Path) -> list[tuple[list[str], str]]:
    a_file = tmp_path / "a-file.txt"
    a_file.write_text("not a folder")
    folder = tmp_path / "a-folder"
    folder.mkdir()
    cuda = ["--device", "cuda"] if not torch.cuda.is_available() else ["--device", f"cuda:{torch.cuda.device_count()}"]
    return [
        (["--steps", "0"], "argument --steps: must be 1 or more, not 0"),
        (["--steps", "-3"], "argument --steps: must be 1 or more, not -3"),
        (["--steps", "many"], "argument --steps: 'many' is not a whole number"),
        (["--num-images", "0"], "argument --num-images: must be 1 or more, not 0"),
        (["--height", "0"], "argument --height: must be 1 or more"),
        (["--width", "-8"], "argument --width: must be 1 or more"),
        (["--class-label", "-1"], "argument --class-label: must be 0 or more, not -1"),
        (["--seed", "-1"], "argument --seed: must be 0 or more"),
        (["--guidance-scale", "nan"], "argument --guidance-scale: must be a finite number"),
        (["--guidance-scale", "inf"], "argument --guidance-scale: must be a finite number"),
        (["--dtype", "float8"], "argument --dtype: invalid choice: 'float8'"),
        (["--output", str(tmp_path / "picture")], "has no file extension; use one of .png, .jpg"),
        (["--output", str(tmp_path / "picture.txt")], "has the extension '.txt', which difflux does not write"),
        (["--output", str(a_file / "x.png")], "is a file, not a folder"),
        (["--output", str(folder)], "is a folder; name a file in it"),
        (cuda, f"--device {cuda[1]!r}: this machine has"),
        (["--device", "toaster"], "--device 'toaster' is not a device name"),
    ]


BAD_OPTION_IDS = [
    "steps-0",
    "steps-negative",
    "steps-word",
    "num-images-0",
    "height-0",
    "width-negative",
    "class-label-negative",
    "seed-negative",
    "guidance-nan",
    "guidance-inf",
    "dtype",
    "output-no-extension",
    "output-unknown-extension",
    "output-under-a-file",
    "output-is-a-folder",
    "device-cuda",
    "device-unknown",
]


@pytest.mark.parametrize("case", range(len(BAD_OPTION_IDS)), ids=BAD_OPTION_IDS)
def test_bad_options_are_refused_before_the_model_loads_in_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], case: int
) -> None:
    option, message = _bad_options(tmp_path)[case]
    monkeypatch.setattr(cli, "_load_pipeline", _never_load)
    argv = ["generate", *option]
    if "--output" not in option:
        argv += ["--output", str(tmp_path / "out.png")]
    try:
        code, _ = run(*argv)
    except SystemExit as exc:  # argparse refuses the value itself
        code = exc.code  # type: ignore[assignment]
    assert code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("difflux generate: error:"), err
    assert message in err
    assert "Traceback" not in err and "num_inference_steps" not in err
    assert not (tmp_path / "out.png").exists()


def test_a_folder_that_cannot_be_written_is_refused_before_loading(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    locked = tmp_path / "locked"
    locked.mkdir()
    real_access = os.access
    # os.access is what the check asks; root passes any permission bits, so stand in for a read-only folder.
    monkeypatch.setattr(os, "access", lambda p, mode: False if Path(p) == locked else real_access(p, mode))
    monkeypatch.setattr(cli, "_load_pipeline", _never_load)
    code, _ = run("generate", "--output", str(locked / "new" / "x.png"))
    assert code == 2
    err = capsys.readouterr().err
    assert f"the folder {locked} cannot be written (permission denied)" in err and "--output" in err
    assert not (locked / "new").exists()


@pytest.mark.parametrize(
    ("option", "message"),
    [
        (["--class-label", "3"], "--class-label 3 is out of range: the model of DDIMPipeline knows 3 classes, 0 to 2"),
        (["--output-name", "x.wav"], "DDIMPipeline makes image, not audio; use one of .png"),
    ],
    ids=["class-label", "audio-extension-for-images"],
)
def test_options_that_depend_on_the_model_are_refused_before_it_runs(
    tiny_folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], option: list[str], message: str
) -> None:
    calls: list[str] = []
    real_call = DDIMPipeline.__call__
    output = tmp_path / (option[1] if option[0] == "--output-name" else "x.png")
    argv = ["generate", str(tiny_folder), "--output", str(output)]
    if option[0] != "--output-name":
        argv += option

    @functools.wraps(real_call)
    def spy(*args: Any, **kwargs: Any) -> Any:
        calls.append("ran")
        return real_call(*args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(DDIMPipeline, "__call__", spy)
        code, _ = run(*argv)
    assert code == 2 and calls == []
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert not output.exists()


@pytest.mark.parametrize(
    ("name", "suggestion"),
    [("DPM++ 2M Karas", "DPM++ 2M Karras"), ("eulr a", "Euler a"), ("DDIMScheduller", "DDIMScheduler")],
)
def test_an_unknown_sampler_lists_the_valid_names_and_suggests_the_closest(
    tiny_folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str, suggestion: str
) -> None:
    code, _ = run("generate", str(tiny_folder), "--scheduler", name, "--output", str(tmp_path / "x.png"))
    assert code == 2
    err = capsys.readouterr().err
    assert f"--scheduler {name!r} is not a scheduler or sampler name for DDIMPipeline (scheduler DDIMScheduler)" in err
    assert f"did you mean {suggestion!r}?" in err
    valid = err.split("valid names: ", 1)[1]
    assert "DDIMScheduler" in valid and "EulerDiscreteScheduler" in valid and "DPM++ 2M Karras" in valid
    assert "pip install" not in err and "plugin" not in err
    assert not (tmp_path / "x.png").exists()


def test_sampler_aliases_work_in_any_case(tiny_folder: Path, tmp_path: Path) -> None:
    code, out = run(
        "generate", str(tiny_folder), "--scheduler", "euler A", "--steps", "2", "--output", str(tmp_path / "x.jpg")
    )
    assert code == 0 and "wrote 3 image(s)" in out
    with PIL.Image.open(tmp_path / "x.jpg") as image:
        assert image.format == "JPEG"
    assert [p.name for p in tmp_path.iterdir()] == ["x.jpg"]  # no partial file left behind


class _StubPipeline:
    """Stands in for a pipeline whose own check names its Python argument."""

    components: dict[str, Any] = {}

    def __call__(self, num_inference_steps: int = 50, batch_size: int = 1) -> Any:
        raise ValueError(f"num_inference_steps must be at most 1000, got {num_inference_steps}\nsee the docs")


def test_errors_from_the_pipeline_name_the_flag_in_one_line_and_debug_shows_the_traceback(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(cli, "_load_pipeline", lambda *a, **k: _StubPipeline())
    argv = ["generate", "somewhere", "--steps", "5000", "--output", str(tmp_path / "x.png")]
    assert run(*argv)[0] == 1
    err = capsys.readouterr().err
    assert err == (
        "difflux generate: error: ValueError: --steps must be at most 1000, got 5000 see the docs "
        "(run with --debug for the traceback)\n"
    )
    for debug in (["--debug", *argv], [*argv, "--debug"]):
        assert run(*debug)[0] == 1
        err = capsys.readouterr().err
        assert err.startswith("Traceback (most recent call last):") and "in __call__" in err
        assert err.endswith(
            "difflux generate: error: ValueError: --steps must be at most 1000, got 5000 see the docs\n"
        )


def test_the_installed_script_prints_one_line_and_exit_status_2(tmp_path: Path) -> None:
    done = subprocess.run(
        [str(SCRIPT), "generate", "--steps", "0", "--output", str(tmp_path / "x.png")], capture_output=True, text=True
    )
    assert done.returncode == 2
    assert done.stderr == (
        "difflux generate: error: argument --steps: must be 1 or more, not 0 (see difflux generate --help)\n"
    )
