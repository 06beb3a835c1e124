"""Audio Diffusion: spectrogram images and audio match Diffusers 0.42.1 (DDPM and DDIM, from noise
and from an input clip with masked edges); Mel round trip; the missing-librosa error."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from difflux_stable_diffusion.testing import gen, load_difflux

from conftest import rel_diff

CLIP = np.sin(np.arange(8000) / 10.0) * np.linspace(0, 1, 8000)


@pytest.fixture(scope="module", params=["DDPMScheduler", "DDIMScheduler"])
def pipes(request: Any, tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Any]:
    import diffusers

    torch.manual_seed(0)
    unet = diffusers.UNet2DModel(
        sample_size=(32, 64), in_channels=1, out_channels=1, layers_per_block=1, block_out_channels=(16, 16),
        norm_num_groups=8, down_block_types=("AttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "AttnUpBlock2D"),
    )
    # a short STFT keeps Griffin-Lim's mel inversion (a least-squares fit per bin) cheap
    mel = diffusers.Mel(x_res=64, y_res=32, sample_rate=8000, n_fft=256, hop_length=64, n_iter=4)
    scheduler = getattr(diffusers, request.param)()
    oracle = diffusers.AudioDiffusionPipeline(vqvae=None, unet=unet, mel=mel, scheduler=scheduler)
    oracle.set_progress_bar_config(disable=True)
    folder = tmp_path_factory.mktemp("audio-diffusion") / request.param
    oracle.save_pretrained(folder)
    return oracle, load_difflux(folder)


def _seeded_griffin_lim(monkeypatch: Any) -> None:
    """Griffin-Lim starts from a random phase (np.random.default_rng()); seed it for both sides."""
    real = np.random.default_rng
    monkeypatch.setattr(np.random, "default_rng", lambda seed=None: real(0 if seed is None else seed))


CASES = {
    "from-noise": {"steps": 3},
    "from-clip-masked": {"steps": 3, "raw_audio": CLIP, "start_step": 1, "mask_start_secs": 0.5, "mask_end_secs": 0.3},
}


@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
def test_images_and_audio_match_diffusers(pipes: tuple[Any, Any], case: str, monkeypatch: Any) -> None:
    oracle, pipe = pipes
    _seeded_griffin_lim(monkeypatch)
    kwargs = CASES[case]
    expected = oracle(**kwargs, generator=gen(0))
    out = pipe(**kwargs, generator=gen(0))
    assert np.abs(np.asarray(out.images[0], int) - np.asarray(expected.images[0], int)).max() <= 1
    assert out.audios.shape == expected.audios.shape == (1, 1, 63 * 64)
    assert rel_diff(out.audios, expected.audios) < 1e-4
    assert out.sample_rate == 8000 and len(out) == 2  # audios, images (the rate is an attribute)
    images, (rate, audios) = pipe(**kwargs, generator=gen(0), return_dict=False)
    assert rate == 8000 and len(images) == len(audios) == 1


def test_mel_round_trip_keeps_a_tone(pipes: tuple[Any, Any]) -> None:
    mel = pipes[1].mel
    t = np.arange(mel.slice_size + 1) / mel.get_sample_rate()
    mel.load_audio(raw_audio=np.sin(2 * np.pi * 1000 * t))
    image = mel.audio_slice_to_image(0)
    assert image.size == (64, 32)
    back = mel.image_to_audio(image)
    spectrum = np.abs(np.fft.rfft(back))
    peak = np.fft.rfftfreq(len(back), 1 / mel.get_sample_rate())[spectrum.argmax()]
    assert abs(peak - 1000) < 100  # the tone survives mel -> image -> Griffin-Lim


def test_encode_then_generate_recovers_the_image(pipes: tuple[Any, Any]) -> None:
    oracle, pipe = pipes
    if type(pipe.scheduler).__name__ != "DDIMScheduler":
        with pytest.raises(ValueError, match="needs a DDIMScheduler"):
            pipe.encode([])
        return
    image = pipe(steps=3, generator=gen(1)).images[0]
    noise = pipe.encode([image], steps=3)
    assert rel_diff(noise, oracle.encode([image], steps=3)) < 1e-4


BAD = {
    "batch": ({"batch_size": 0}, "batch_size must be a positive int"),
    "start-without-clip": ({"start_step": 1, "steps": 3}, "start_step needs an input clip"),
    "start-past-end": ({"start_step": 5, "steps": 3, "raw_audio": CLIP}, "start_step must be an int in [0, steps=3)"),
    "noise-type": ({"noise": [1.0]}, "noise must be a torch.Tensor"),
}


@pytest.mark.parametrize("case", list(BAD), ids=list(BAD))
def test_bad_input(pipes: tuple[Any, Any], case: str) -> None:
    kwargs, message = BAD[case]
    with pytest.raises((ValueError, TypeError)) as info:
        pipes[1](**kwargs)
    assert message in str(info.value)


def test_missing_librosa_names_the_extra(monkeypatch: Any, tmp_path: Path) -> None:
    from difflux_audio.audio_diffusion import Mel
    from difflux_audio.extras import MissingExtraError

    monkeypatch.setitem(sys.modules, "librosa", None)
    with pytest.raises(MissingExtraError) as info:
        Mel(x_res=64, y_res=32)
    assert 'pip install "difflux-audio[librosa]"' in str(info.value) and isinstance(info.value, ImportError)
