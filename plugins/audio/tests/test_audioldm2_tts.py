"""AudioLDM 2 text-to-speech (``text_encoder_2`` a ``VitsModel``, ``transcription=``): parity with
Diffusers 0.42.1 (GPT2LMHeadModel live; GPT2Model against the stored transformers-4 reference),
loading through ``DiffusionPipeline.from_pretrained``, the phoneme end marker, embeddings in, and
bad input refused before any model runs."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from difflux_stable_diffusion.testing import gen, load_difflux

from conftest import SECONDS, diffusers_diff, embeds_vs_text, reference_diff, rel_diff


@pytest.fixture(scope="session")
def tts(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Path]:
    """``(Diffusers text-to-speech AudioLDM2Pipeline with GPT2LMHeadModel, the folder it saved)``."""
    import audio_builders

    tmp = tmp_path_factory.mktemp("audioldm2_tts")
    pipe = audio_builders.audioldm2_tts(tmp)
    pipe.save_pretrained(tmp / "pipe")
    return pipe, tmp / "pipe"


@pytest.fixture(scope="session")
def tts_difflux(tts: tuple[Any, Path]) -> Any:
    return load_difflux(tts[1])


CASES = {
    "two-prompts-guided": {
        "prompt": ["a man speaking", "a woman whispering"],
        "transcription": ["hello world", "good day to you"],
    },
    "one-no-guidance-3-tokens": {
        "prompt": "a child", "transcription": "hi there", "guidance_scale": 1.0, "max_new_tokens": 3,
    },
    "negative-truncated": {
        "prompt": "a man speaking", "transcription": "What a long transcription, cut to its first phonemes!",
        "negative_prompt": "noise",
    },
}


@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
def test_speech_matches_diffusers(tts: tuple[Any, Path], tts_difflux: Any, case: str) -> None:
    assert diffusers_diff(tts[0], tts_difflux, **CASES[case]) < 1e-4


def test_conditioning_and_latents_match_diffusers(tts: tuple[Any, Path], tts_difflux: Any) -> None:
    """The speech-specific part, seen before the VAE and vocoder damp it: the UNet's conditioning
    (VITS states with their end-marked mask, GPT-2 states, zero negatives) and the final latents."""
    theirs, ours = tts[0], tts_difflux
    kwargs = CASES["two-prompts-guided"]
    states, mask, generated = theirs.encode_prompt(
        kwargs["prompt"], "cpu", 1, True, transcription=kwargs["transcription"], max_new_tokens=4
    )
    mine = ours.encode_prompt(
        kwargs["prompt"], transcription=kwargs["transcription"], guidance=True, max_new_tokens=4
    ).stacked()
    assert torch.equal(mine[1].long(), mask.long())
    assert rel_diff(mine[0], states) < 1e-5 and rel_diff(mine[2], generated) < 1e-5
    call = {**kwargs, "num_inference_steps": 2, "audio_length_in_s": SECONDS, "output_type": "latent"}
    expected = theirs(**call, generator=gen(0)).audios
    assert rel_diff(ours(**call, generator=gen(0)).audios, expected) < 1e-4


def test_the_tiny_pipeline_hears_the_transcription(tts_difflux: Any) -> None:
    """What keeps the parity tests able to fail: another transcription moves the latents far more
    than their tolerance (1e-4)."""
    call = {"num_inference_steps": 2, "audio_length_in_s": SECONDS, "output_type": "latent"}
    a = tts_difflux("a man speaking", transcription="hello world", generator=gen(0), **call).audios
    b = tts_difflux("a man speaking", transcription="goodbye moon", generator=gen(0), **call).audios
    assert rel_diff(a, b) > 1e-2


def test_gpt2model_speech_matches_the_transformers4_reference(
    reference_folders: dict[str, Path], references: dict[str, torch.Tensor]
) -> None:
    case = "audioldm2-tts-gpt2model"
    pipe, diff = reference_diff(reference_folders[case], case, references)
    assert type(pipe.language_model).__name__ == "GPT2Model" and pipe.is_text_to_speech
    assert diff < 1e-4


def test_the_speech_folder_loads_through_from_pretrained(tts: tuple[Any, Path], tts_difflux: Any) -> None:
    import json

    from difflux_audio import AudioLDM2Pipeline

    index = json.loads((tts[1] / "model_index.json").read_text())
    assert index["text_encoder_2"] == ["transformers", "VitsModel"]
    assert index["tokenizer_2"] == ["transformers", "VitsTokenizer"]
    assert type(tts_difflux) is AudioLDM2Pipeline and tts_difflux.is_text_to_speech
    assert type(tts_difflux.text_encoder_2).__name__ == "VitsModel"
    assert type(tts_difflux.tokenizer_2).__name__ == "VitsTokenizer"
    ours = tts_difflux.text_encoder_2.state_dict()
    theirs = tts[0].text_encoder_2.state_dict()
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)


def test_each_transcription_ends_with_the_end_phoneme() -> None:
    from difflux_audio.pipeline_audioldm2 import PHONEME_END_ID, mark_phoneme_end

    ids = torch.tensor([[5, 6, 0, 0], [7, 0, 9, 0], [1, 2, 3, 4]])
    mask = torch.tensor([[1, 1, 0, 0], [1, 0, 1, 0], [1, 1, 1, 1]])
    new_ids, new_mask = mark_phoneme_end(ids, mask)
    end = PHONEME_END_ID
    assert end == 182  # the speech checkpoints' end phoneme (Diffusers writes the same)
    assert new_ids.tolist() == [[5, 6, end, 0], [7, end, 9, 0], [1, 2, 3, 4]]
    assert new_mask.tolist() == [[1, 1, 1, 0], [1, 1, 1, 0], [1, 1, 1, 1]]
    assert ids[0, 2] == 0 and mask[0, 2] == 0  # the inputs are left alone


def test_embeddings_in_need_no_transcription(tts_difflux: Any) -> None:
    pipe = tts_difflux
    e = pipe.encode_prompt("a man speaking", transcription="hello", guidance=True)
    hidden = pipe.text_encoder_2.config.hidden_size
    assert e.prompt_embeds.shape == (1, pipe.tokenizer_2.model_max_length, hidden)
    assert e.negative is not None and not e.negative.prompt_embeds.any() and not e.negative.attention_mask.any()
    assert embeds_vs_text(pipe, prompt="a man speaking", transcription="hello") < 1e-6


def test_offload_hooks_run_around_the_encoders_parts(tts_difflux: Any) -> None:
    """The pipeline calls parts of ``text_encoder`` (CLAP's text tower) and ``text_encoder_2`` (the VITS
    phoneme encoder); the components' offload hooks (accelerate ``ModelHook``) run around those calls."""
    from accelerate.hooks import ModelHook, add_hook_to_module, remove_hook_from_module

    calls: list[str] = []

    class Spy(ModelHook):  # type: ignore[misc]
        def __init__(self, name: str) -> None:
            self.name = name

        def pre_forward(self, module: Any, *args: Any, **kwargs: Any) -> tuple[Any, Any]:
            calls.append(f"{self.name} on")
            return args, kwargs

        def post_forward(self, module: Any, output: Any) -> Any:
            calls.append(f"{self.name} off")
            return output

    for name in ("text_encoder", "text_encoder_2"):
        add_hook_to_module(getattr(tts_difflux, name), Spy(name))
    try:
        tts_difflux.encode_prompt("a man", transcription="hello")
    finally:
        for name in ("text_encoder", "text_encoder_2"):
            remove_hook_from_module(getattr(tts_difflux, name))
    assert calls == ["text_encoder on", "text_encoder off", "text_encoder_2 on", "text_encoder_2 off"]


def test_saved_speech_folder_loads_in_diffusers(tts_difflux: Any, tmp_path: Path) -> None:
    import diffusers

    tts_difflux.save_pretrained(tmp_path)
    back = diffusers.AudioLDM2Pipeline.from_pretrained(tmp_path)
    back.set_progress_bar_config(disable=True)
    kw = {"prompt": "a man", "transcription": "hello", "num_inference_steps": 1, "audio_length_in_s": SECONDS}
    assert rel_diff(tts_difflux(**kw, generator=gen(3)).audios, back(**kw, generator=gen(3)).audios) < 1e-4


@contextlib.contextmanager
def models_ran(pipe: Any) -> Iterator[list[str]]:
    """Records every module forward of ``pipe``'s models (a forward pre-hook on each submodule)."""
    ran: list[str] = []
    handles = []
    for name, component in pipe.components.items():
        if isinstance(component, torch.nn.Module):
            for sub, module in component.named_modules():
                def spy(*_: Any, where: str = f"{name}.{sub}".rstrip(".")) -> None:
                    ran.append(where)

                handles.append(module.register_forward_pre_hook(spy))
    try:
        yield ran
    finally:
        for handle in handles:
            handle.remove()


@pytest.fixture
def no_model_runs(tts_difflux: Any) -> Iterator[list[str]]:
    with models_ran(tts_difflux) as ran:
        yield ran


BAD = {
    "no-transcription": ({"prompt": "a man"}, ValueError, "pass transcription="),
    "not-a-string": ({"prompt": "a man", "transcription": 3}, TypeError, "transcription must be a string or a list"),
    "list-of-non-strings": (
        {"prompt": ["a", "b"], "transcription": ["hello", None]}, TypeError, "transcription must be a string",
    ),
    "fewer-than-prompts": (
        {"prompt": ["a", "b"], "transcription": "hello"}, ValueError, "1 transcription(s) for 2 prompt(s)",
    ),
    "more-than-prompts": (
        {"prompt": "a", "transcription": ["hello", "there"]}, ValueError, "one transcription per prompt",
    ),
}


@pytest.mark.parametrize("case", list(BAD), ids=list(BAD))
def test_bad_transcription_is_refused_before_any_model_runs(
    tts_difflux: Any, no_model_runs: list[str], case: str
) -> None:
    kwargs, error, message = BAD[case]
    with pytest.raises(error) as info:
        tts_difflux(**kwargs, num_inference_steps=1, audio_length_in_s=SECONDS)
    assert message in str(info.value)
    assert no_model_runs == []


@pytest.mark.parametrize("what", ["vocab", "length"])
def test_a_speech_checkpoint_that_cannot_hold_the_transcription_is_refused(
    tts_difflux: Any, no_model_runs: list[str], monkeypatch: pytest.MonkeyPatch, what: str
) -> None:
    if what == "vocab":
        monkeypatch.setattr(tts_difflux.text_encoder_2.config, "vocab_size", 100)
        message = "vocab_size > 182"
    else:
        monkeypatch.setattr(tts_difflux.tokenizer_2, "model_max_length", 30)
        message = "set tokenizer_2.model_max_length = 24"
    with pytest.raises(ValueError) as info:
        tts_difflux("a man", transcription="hello", num_inference_steps=1, audio_length_in_s=SECONDS)
    assert message in str(info.value)
    assert no_model_runs == []


def test_transcription_for_a_text_to_audio_checkpoint_is_refused(audioldm2_difflux: Any) -> None:
    with models_ran(audioldm2_difflux) as ran, pytest.raises(ValueError) as info:
        audioldm2_difflux("a cat", transcription="hello", num_inference_steps=1)
    assert "transcription=" in str(info.value) and "T5EncoderModel" in str(info.value)
    assert "leave transcription out" in str(info.value)
    assert ran == []


def test_the_spy_sees_the_phoneme_encoder_run(tts_difflux: Any) -> None:
    """The refusals above mean something: the same spy records a real call's VITS phoneme encoder."""
    with models_ran(tts_difflux) as ran:
        tts_difflux.encode_prompt("a man", transcription="hello")
    assert "text_encoder_2.text_encoder" in ran and "text_encoder_2" not in ran


def test_generate_speaks_the_transcription(tts: tuple[Any, Path], tts_difflux: Any, tmp_path: Path) -> None:
    import io
    import wave

    import numpy as np
    from difflux import cli

    target = tmp_path / "speech.wav"
    argv = ["generate", str(tts[1]), "--prompt", "a man", "--transcription", "hello", "--steps", "2", "--seed", "0",
            "--audio-length", str(SECONDS), "--output", str(target)]
    out = io.StringIO()
    assert cli.main(argv, out=out) == 0, out.getvalue()
    with wave.open(str(target)) as clip:
        pcm = np.frombuffer(clip.readframes(clip.getnframes()), dtype="<i2")
    expected = tts_difflux(
        "a man", transcription="hello", num_inference_steps=2, generator=gen(0), audio_length_in_s=SECONDS
    ).audios.reshape(-1)
    assert np.abs(pcm - np.round(np.clip(expected, -1, 1) * 32767)).max() <= 1
