"""Spectrogram Diffusion: the spectrogram matches Diffusers 0.42.1 (two segments, the second attending
to the first), MelGAN through onnxruntime matches Diffusers' OnnxRuntimeModel, folders load both
ways, the missing-onnxruntime error, bad input.

Diffusers 0.42.1's note / continuous encoders call ``get_extended_attention_mask``, a transformers 4
helper that transformers 5 dropped; the oracle gets that helper back (``conftest.tiny_spectrogram_diffusion``).
The pinned transformers-4.49 oracle (``nox -s audio-oracle``) cannot stand in: there Diffusers' call
of ``T5Block`` fails on a missing ``cache_position``.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from difflux_stable_diffusion.testing import gen, load_difflux

from conftest import export_melgan_stand_in, rel_diff, tiny_spectrogram_diffusion

TOKENS = [[1, 5, 7, 9] + [0] * 28, [3, 4, 6] + [0] * 29]


@pytest.fixture(scope="module")
def oracle_and_folder(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Path]:
    pipe = tiny_spectrogram_diffusion()
    folder = tmp_path_factory.mktemp("spectrogram") / "pipe"
    pipe.save_pretrained(folder)
    return pipe, folder


@pytest.fixture(scope="module")
def pipe(oracle_and_folder: tuple[Any, Path]) -> Any:
    return load_difflux(oracle_and_folder[1])


def test_spectrogram_matches_diffusers(oracle_and_folder: tuple[Any, Path], pipe: Any) -> None:
    expected = oracle_and_folder[0](TOKENS, num_inference_steps=2, output_type="mel", generator=gen(0)).audios
    out = pipe(TOKENS, num_inference_steps=2, output_type="mel", generator=gen(0))
    assert out.audios.shape == expected.shape == (1, 512, 128) and out.sample_rate is None
    assert rel_diff(out.audios, expected) < 1e-5


def test_melgan_through_onnxruntime(oracle_and_folder: tuple[Any, Path], pipe: Any, tmp_path: Path) -> None:
    pytest.importorskip("onnx", reason="exporting the tiny MelGAN stand-in to ONNX needs the onnx package")
    import diffusers
    from difflux_audio.spectrogram_diffusion import OnnxRuntimeModel

    export_melgan_stand_in(tmp_path / "melgan")
    ours = OnnxRuntimeModel.from_pretrained(tmp_path / "melgan")
    theirs = diffusers.OnnxRuntimeModel.from_pretrained(tmp_path / "melgan", provider_options=None)
    oracle = oracle_and_folder[0]
    oracle.register_modules(melgan=theirs)
    pipe.register_modules(melgan=ours)
    try:
        expected = oracle(TOKENS, num_inference_steps=2, generator=gen(1)).audios[0]
        out = pipe(TOKENS, num_inference_steps=2, generator=gen(1))
        assert out.sample_rate == 16000 and out.audios.shape == (1, 512 * 4)
        assert rel_diff(out.audios, expected) < 1e-5
        pipe.save_pretrained(tmp_path / "saved")
        assert (tmp_path / "saved" / "melgan" / "model.onnx").is_file()
        back = load_difflux(tmp_path / "saved")
        assert type(back.melgan).__name__ == "OnnxRuntimeModel"
    finally:
        oracle.register_modules(melgan=None)
        pipe.register_modules(melgan=None)


def test_saved_folder_loads_in_diffusers(pipe: Any, oracle_and_folder: tuple[Any, Path], tmp_path: Path) -> None:
    import diffusers
    from diffusers.pipelines.deprecated.spectrogram_diffusion import SpectrogramContEncoder, SpectrogramNotesEncoder

    pipe.save_pretrained(tmp_path)
    # Diffusers 0.42.1 does not export the encoders at its top level, so it cannot resolve them from
    # model_index.json: the component folders difflux wrote are loaded class by class
    back = diffusers.SpectrogramDiffusionPipeline(
        notes_encoder=SpectrogramNotesEncoder.from_pretrained(tmp_path / "notes_encoder"),
        continuous_encoder=SpectrogramContEncoder.from_pretrained(tmp_path / "continuous_encoder"),
        decoder=diffusers.T5FilmDecoder.from_pretrained(tmp_path / "decoder"),
        scheduler=diffusers.DDPMScheduler.from_pretrained(tmp_path / "scheduler"),
        melgan=None,
    )
    back.set_progress_bar_config(disable=True)
    ours = pipe(TOKENS[:1], num_inference_steps=1, output_type="mel", generator=gen(2)).audios
    theirs = back(TOKENS[:1], num_inference_steps=1, output_type="mel", generator=gen(2)).audios
    assert rel_diff(ours, theirs) < 1e-5


def test_missing_onnxruntime_names_the_extra(monkeypatch: Any, tmp_path: Path) -> None:
    from difflux_audio.extras import MissingExtraError
    from difflux_audio.spectrogram_diffusion import OnnxRuntimeModel

    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(MissingExtraError) as info:
        OnnxRuntimeModel.from_pretrained(tmp_path)
    assert 'pip install "difflux-audio[onnxruntime]"' in str(info.value)


BAD = {
    "tokens-not-a-list": ({"input_tokens": "C4 E4"}, "input_tokens must be a non-empty list"),
    "no-segments": ({"input_tokens": []}, "input_tokens must be a non-empty list"),
    "audio-without-melgan": ({"input_tokens": TOKENS}, "needs the melgan component"),
    "output-type": ({"input_tokens": TOKENS, "output_type": "pt"}, "choose 'np'"),
    "steps": ({"input_tokens": TOKENS, "num_inference_steps": 0, "output_type": "mel"}, "num_inference_steps"),
    "segment-too-long": ({"input_tokens": [[1] * 33], "output_type": "mel"}, "takes at most 32 (its max_length)"),
    "no-input": ({"output_type": "mel"}, "pass input_tokens"),
}


@pytest.mark.parametrize("case", list(BAD), ids=list(BAD))
def test_bad_input(pipe: Any, case: str) -> None:
    kwargs, message = BAD[case]
    with pytest.raises((ValueError, TypeError)) as info:
        pipe(**kwargs)
    assert message in str(info.value)


def test_scaling_round_trip(pipe: Any) -> None:
    features = torch.linspace(-11.0, 3.0, 50)
    back = pipe.scale_to_features(pipe.scale_features(features))
    assert torch.allclose(back, features, atol=1e-5)
    assert np.isclose(float(pipe.scale_features(torch.tensor(4.0))), 1.0)
