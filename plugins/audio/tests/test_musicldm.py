"""MusicLDM against the stored transformers-4 references of Diffusers 0.42.1 (which fails under
transformers 5), including CLAP ranking of two clips per prompt; the missing-librosa fallback."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from difflux_stable_diffusion.testing import gen, load_difflux

from conftest import rel_diff


@pytest.fixture(scope="module")
def musicldm(reference_folders: dict[str, Path]) -> Any:
    return load_difflux(reference_folders["musicldm"])


def test_reference_file_names_its_regenerating_command() -> None:
    from safetensors import safe_open

    with safe_open(str(Path(__file__).parent / "data" / "reference_tf4.safetensors"), "pt") as f:
        meta = f.metadata()
    assert meta["regenerate"] == "nox -s audio-oracle" and meta["transformers"].startswith("4.")


@pytest.mark.parametrize("case", ["musicldm-one", "musicldm-ranked"])
def test_waveforms_match_the_transformers4_reference(musicldm: Any, references: dict[str, torch.Tensor],
                                                     case: str) -> None:
    from audio_builders import REFERENCE_CASES

    out = musicldm(**REFERENCE_CASES[case][1], generator=gen(0))
    assert out.sample_rate == 16000
    assert rel_diff(out.audios[:, ::4], references[case]) < 1e-4


def test_without_librosa_the_clips_keep_their_order(musicldm: Any, monkeypatch: Any, caplog: Any) -> None:
    from audio_builders import REFERENCE_CASES

    kwargs = REFERENCE_CASES["musicldm-ranked"][1]
    ranked = musicldm(**kwargs, generator=gen(0)).audios
    monkeypatch.setitem(sys.modules, "librosa", None)
    plain = musicldm(**kwargs, generator=gen(0)).audios
    assert 'pip install "difflux-audio[librosa]"' in caplog.text
    # same clips, maybe another order: every ranked clip is one of the unranked ones
    for clip in ranked:
        assert min(rel_diff(clip, other) for other in plain) < 1e-6
