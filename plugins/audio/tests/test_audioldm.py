"""AudioLDM: parity with Diffusers 0.42.1, the audio output, callbacks, generators and bad input."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from difflux.pipeline_utils import AudioPipelineOutput
from difflux_stable_diffusion.testing import gen, load_difflux

from conftest import SECONDS, rel_diff

CASES = {
    "one-prompt": {"prompt": "a cat"},
    "batch-negative-2-per-prompt": {
        "prompt": ["a cat", "dog barking"],
        "negative_prompt": ["noise", "hum"],
        "num_waveforms_per_prompt": 2,
    },
    "no-guidance": {"prompt": "rain", "guidance_scale": 1.0},
}


@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
def test_waveforms_match_diffusers(audioldm: tuple[Any, Path], audioldm_difflux: Any, case: str) -> None:
    oracle, _ = audioldm
    kwargs = {**CASES[case], "num_inference_steps": 2, "audio_length_in_s": SECONDS}
    expected = oracle(**kwargs, generator=gen(0)).audios
    out = audioldm_difflux(**kwargs, generator=gen(0))
    assert isinstance(out, AudioPipelineOutput)
    assert out.audios.shape == expected.shape == (expected.shape[0], int(SECONDS * 16000))
    assert rel_diff(out.audios, expected) < 1e-4


def test_default_length_comes_from_the_unet(audioldm: tuple[Any, Path], audioldm_difflux: Any) -> None:
    # sample_size 32 latents x VAE factor 2 x 4 samples per frame = 256 samples
    expected = audioldm[0]("a cat", num_inference_steps=1, generator=gen(1)).audios
    out = audioldm_difflux("a cat", num_inference_steps=1, generator=gen(1)).audios
    assert out.shape == expected.shape == (1, 256)
    assert rel_diff(out, expected) < 1e-4


def test_output_types_and_sample_rate(audioldm_difflux: Any) -> None:
    kw = {"prompt": "a cat", "num_inference_steps": 1, "audio_length_in_s": SECONDS}
    np_out = audioldm_difflux(**kw, generator=gen(2))
    assert np_out.sample_rate == 16000 and isinstance(np_out.audios, np.ndarray)
    assert np_out.audios.dtype == np.float32
    # the sample rate is an attribute, not part of the tuple view (out[0] is the waveforms, as in Diffusers)
    assert len(np_out) == 1 and np_out.keys() == ["audios"]
    pt = audioldm_difflux(**kw, generator=gen(2), output_type="pt", return_dict=False)[0]
    assert isinstance(pt, torch.Tensor) and np.array_equal(pt.numpy(), np_out.audios)
    latents = audioldm_difflux(**kw, generator=gen(2), output_type="latent")
    assert latents.audios.shape == (1, 4, 128, 4) and latents.sample_rate is None


def test_each_generator_reproduces_its_clip_alone(audioldm_difflux: Any) -> None:
    kw = {"num_inference_steps": 1, "audio_length_in_s": SECONDS}
    both = audioldm_difflux("a cat", num_waveforms_per_prompt=2, generator=[gen(3), gen(4)], **kw).audios
    alone = audioldm_difflux("a cat", generator=gen(4), **kw).audios
    assert rel_diff(both[1:], alone) < 1e-5
    assert rel_diff(both[:1], both[1:]) > 1e-2


def test_prompt_embeds_and_callback(audioldm_difflux: Any) -> None:
    pipe = audioldm_difflux
    embeds = pipe.encode_prompt("a cat").embeds
    kw = {"num_inference_steps": 2, "audio_length_in_s": SECONDS}
    by_text = pipe("a cat", generator=gen(5), **kw).audios
    by_embeds = pipe(prompt_embeds=embeds, generator=gen(5), **kw).audios
    assert rel_diff(by_embeds, by_text) < 1e-6
    seen: list[tuple[int, tuple[int, ...]]] = []

    def zero(p: Any, i: int, t: Any, tensors: dict[str, Any]) -> dict[str, Any]:
        seen.append((i, tuple(tensors["prompt_embeds"].shape)))
        return {"latents": torch.zeros_like(tensors["latents"])} if i == 1 else {}

    out = pipe("a cat", generator=gen(5), callback_on_step_end=zero,
               callback_on_step_end_tensor_inputs=["latents", "prompt_embeds"], output_type="latent", **kw)
    assert seen == [(0, (2, 8)), (1, (2, 8))]
    assert torch.count_nonzero(out.audios) == 0


def test_saved_folder_loads_in_diffusers(audioldm_difflux: Any, tmp_path: Path) -> None:
    import diffusers

    audioldm_difflux.save_pretrained(tmp_path)
    back = diffusers.AudioLDMPipeline.from_pretrained(tmp_path)
    back.set_progress_bar_config(disable=True)
    kw = {"prompt": "a cat", "num_inference_steps": 1, "audio_length_in_s": SECONDS}
    assert rel_diff(back(**kw, generator=gen(6)).audios, audioldm_difflux(**kw, generator=gen(6)).audios) < 1e-4
    assert type(load_difflux(tmp_path)).__name__ == "AudioLDMPipeline"


BAD = {
    "both-prompt-and-embeds": ({"prompt": "a", "prompt_embeds": torch.zeros(1, 8)}, "not both"),
    "no-prompt": ({}, "pass prompt"),
    "prompt-not-text": ({"prompt": 3}, "prompt must be a string"),
    "embeds-wrong-width": ({"prompt_embeds": torch.zeros(1, 5)}, "have 5 features but the UNet takes 8"),
    "embeds-3d": ({"prompt_embeds": torch.zeros(1, 4, 8)}, "(batch, features)"),
    "too-short": ({"prompt": "a", "audio_length_in_s": 0.0001}, "too short"),
    "negative-length": ({"prompt": "a", "audio_length_in_s": -1.0}, "positive number of seconds"),
    "zero-waveforms": ({"prompt": "a", "num_waveforms_per_prompt": 0}, "num_waveforms_per_prompt"),
    "image-output": ({"prompt": "a", "output_type": "pil"}, "output_type='pil'"),
    "steps": ({"prompt": "a", "num_inference_steps": 0}, "num_inference_steps"),
    "generators": ({"prompt": "a", "generator": [gen(0), gen(1)]}, "2 generators"),
    "callback-name": ({"prompt": "a", "callback_on_step_end": lambda *a: {},
                       "callback_on_step_end_tensor_inputs": ["noise"]}, "noise"),
    "negative-count": ({"prompt": ["a", "b"], "negative_prompt": ["x"]}, "1 negative prompts for 2"),
    "latents-shape": ({"prompt": "a", "latents": torch.zeros(1, 4, 3, 3), "audio_length_in_s": SECONDS},
                      "expected (1, 4, 128, 4)"),
}


@pytest.mark.parametrize("case", list(BAD), ids=list(BAD))
def test_bad_input_is_refused_before_any_model_runs(audioldm_difflux: Any, case: str, monkeypatch: Any) -> None:
    kwargs, message = BAD[case]
    pipe = audioldm_difflux
    if case != "latents-shape":  # the latents are checked against the shape once it is known
        monkeypatch.setattr(pipe.unet, "forward", lambda *a, **k: pytest.fail("the UNet ran"))
    with pytest.raises((ValueError, TypeError)) as info:
        pipe(**kwargs, num_inference_steps=kwargs.pop("num_inference_steps", 1))
    assert message in str(info.value)
