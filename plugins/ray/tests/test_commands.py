"""``difflux batch`` / ``difflux serve`` on the command line: registered by the plugin, light to build,
bad command lines refused before any model loads (exit status 2, one line), a batch run end to end."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from difflux import cli
from difflux_ray.testing import STEPS, expected_png_pixels, png_pixels, write_jobs


def _run(*argv: str) -> tuple[int, str]:
    out = io.StringIO()
    return cli.main(list(argv), out=out), out.getvalue()


def test_building_the_parser_lists_batch_and_serve_and_imports_neither_ray_nor_torch() -> None:
    code = (
        "import sys, difflux.cli as c; h = c.build_parser().format_help(); "
        "heavy = {m.split('.')[0] for m in sys.modules} & {'ray', 'torch', 'fastapi'}; "
        "print('batch' in h, 'serve' in h, sorted(heavy))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.stdout.split("\n")[0] == "True True []", done.stderr


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["batch", "{jobs}", "--output", "{out}", "--actors", "0"], "--actors: must be at least 1, not 0"),
        (["batch", "{jobs}", "--output", "{out}", "--engine", "spark"], "--engine: invalid choice: 'spark'"),
        (["batch", "{tmp}/missing.jsonl", "--output", "{out}"], "jobs file '{tmp}/missing.jsonl' does not exist"),
        (["batch", "{bad}", "--output", "{out}"], "{bad} line 1: unknown key(s) ['promt']"),
        (["serve", "--port", "70000", "--engine", "local"], "--port must be from 0 to 65535, not 70000"),
        (["serve", "--max-n", "0"], "--max-n: must be at least 1, not 0"),
    ],
)
def test_a_bad_command_line_is_one_line_and_exit_status_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    names = {"jobs": write_jobs(tmp_path / "jobs.jsonl", 1), "out": tmp_path / "out", "tmp": tmp_path}
    names["bad"] = tmp_path / "bad.jsonl"
    names["bad"].write_text('{"promt": "a 1"}\n')
    try:  # argparse's own refusals exit; ours return the status
        code, _ = _run(*(a.format(**names) for a in argv))
    except SystemExit as exc:
        code = int(str(exc.code))
    assert code == 2
    err = capsys.readouterr().err
    assert message.format(**names) in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_difflux_batch_local_writes_images_and_manifest_then_resumes(text2img: Any, tmp_path: Path) -> None:
    jobs = write_jobs(tmp_path / "jobs.jsonl", 2)
    argv = ["batch", str(jobs), "--output", str(tmp_path / "out"), "--engine", "local", "--seed", "9", "--no-progress"]
    code, text = _run(*argv)
    assert code == 0 and text.startswith(f"wrote 2 image(s) to {tmp_path / 'out'} (1 worker(s)")
    records = [json.loads(line) for line in (tmp_path / "out" / "manifest.jsonl").read_text().splitlines()]
    assert [(r["index"], r["seed"]) for r in records] == [(0, 9), (1, 10)]
    np_want = expected_png_pixels(text2img, "a handwritten 1", 10, STEPS)
    assert (png_pixels(tmp_path / "out" / "images" / "000001.png") == np_want).all()
    code, text = _run(*argv)
    assert code == 0 and "wrote 0 image(s)" in text and "2 already done" in text
