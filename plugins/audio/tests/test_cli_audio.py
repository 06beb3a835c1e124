"""``difflux generate`` writes .wav for audio pipelines: AudioLDM (mono, the vocoder's rate) and
Dance Diffusion (stereo, the UNet's rate), through soundfile or the standard library's wave."""

from __future__ import annotations

import io
import sys
import wave
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from difflux import cli
from difflux_stable_diffusion.testing import gen

from conftest import SECONDS


def _run(*argv: str) -> tuple[int, str]:
    out = io.StringIO()
    return cli.main(list(argv), out=out), out.getvalue()


@pytest.mark.parametrize("writer", ["soundfile", "wave"])
def test_generate_writes_the_clip_as_wav(
    audioldm: tuple[Any, Path], audioldm_difflux: Any, tmp_path: Path, writer: str, monkeypatch: Any
) -> None:
    if writer == "wave":
        monkeypatch.setitem(sys.modules, "soundfile", None)  # import fails: the stdlib writer runs
    target = tmp_path / "clip.wav"
    code, out = _run(
        "generate", str(audioldm[1]), "--prompt", "a cat", "--steps", "2", "--seed", "0",
        "--audio-length", str(SECONDS), "--num-images", "2", "--output", str(target),
    )
    assert code == 0 and "2 audio clip(s)" in out and "AudioLDMPipeline" in out
    with wave.open(str(target)) as clip:
        assert (clip.getnchannels(), clip.getframerate(), clip.getsampwidth()) == (1, 16000, 2)
        pcm = np.frombuffer(clip.readframes(clip.getnframes()), dtype="<i2")
    expected = audioldm_difflux(
        "a cat", num_inference_steps=2, generator=gen(0), audio_length_in_s=SECONDS, num_waveforms_per_prompt=2
    ).audios
    assert pcm.shape == (expected.size,)
    assert np.abs(pcm - np.round(np.clip(expected.reshape(-1), -1, 1) * 32767)).max() <= 1
    assert not list(tmp_path.glob(".*partial"))


def test_dance_diffusion_output_carries_its_sample_rate(tmp_path: Path) -> None:
    from difflux_stable_diffusion.testing import load_difflux
    from diffusers import DanceDiffusionPipeline, DDIMScheduler, UNet1DModel

    unet = UNet1DModel(
        sample_size=64, sample_rate=8000, in_channels=2, out_channels=2, extra_in_channels=16,
        time_embedding_dim=16, block_out_channels=(32, 32, 64),
    )
    DanceDiffusionPipeline(unet=unet, scheduler=DDIMScheduler()).save_pretrained(tmp_path / "dance")
    pipe = load_difflux(tmp_path / "dance")
    assert pipe(num_inference_steps=2, generator=gen(0)).sample_rate == 8000
    target = tmp_path / "dance.wav"
    code, out = _run("generate", str(tmp_path / "dance"), "--steps", "2", "--audio-length", "0.01",
                     "--output", str(target))
    assert code == 0, out
    with wave.open(str(target)) as clip:
        assert (clip.getnchannels(), clip.getframerate(), clip.getnframes()) == (2, 8000, 80)


def test_audio_length_must_be_positive(capsys: Any) -> None:
    with pytest.raises(SystemExit) as info:
        _run("generate", "x", "--audio-length", "0")
    assert info.value.code == 2
    assert "--audio-length: must be above 0" in capsys.readouterr().err
