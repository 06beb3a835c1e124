"""AudioLDM 2: parity with Diffusers 0.42.1 (GPT2LMHeadModel live; GPT2Model against the stored
transformers-4 references), the language-model generation, embeddings in, bad input."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from difflux_stable_diffusion.testing import gen

from conftest import SECONDS, diffusers_diff, embeds_vs_text, reference_diff, rel_diff

CASES = {
    "one-prompt": {"prompt": "a cat"},
    "batch-negative-ranked": {
        "prompt": ["a cat", "dog barking"],
        "negative_prompt": ["noise", "hum"],
        "num_waveforms_per_prompt": 2,
    },
    "three-new-tokens-no-guidance": {"prompt": "rain", "max_new_tokens": 3, "guidance_scale": 1.0},
}


@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
def test_waveforms_match_diffusers(audioldm2: tuple[Any, Path], audioldm2_difflux: Any, case: str) -> None:
    assert diffusers_diff(audioldm2[0], audioldm2_difflux, **CASES[case]) < 1e-4


@pytest.mark.parametrize("case", ["audioldm2-gpt2model", "audioldm2-gpt2model-ranked"])
def test_gpt2model_matches_the_transformers4_reference(
    reference_folders: dict[str, Path], references: dict[str, torch.Tensor], case: str
) -> None:
    from audio_builders import REFERENCE_CASES

    pipe, diff = reference_diff(reference_folders[REFERENCE_CASES[case][0]], case, references)
    assert type(pipe.language_model).__name__ == "GPT2Model"
    assert diff < 1e-4


def test_language_model_heads_generate_the_same_states(audioldm2_difflux: Any) -> None:
    from difflux_audio.pipeline_audioldm2 import generate_language_model
    from transformers import GPT2Model

    lm_head = audioldm2_difflux.language_model
    bare = GPT2Model(lm_head.config).eval()
    bare.load_state_dict(lm_head.transformer.state_dict())
    x = torch.randn(2, 5, 16, generator=gen(1))
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    a = generate_language_model(lm_head, x, mask, 4)
    b = generate_language_model(bare, x, mask, 4)
    assert a.shape == (2, 4, 16) and torch.allclose(a, b, atol=1e-6)
    # the cache gives what recomputing the whole sequence gives
    seq, m = x, mask
    for _ in range(4):
        last = bare(inputs_embeds=seq, attention_mask=m, output_hidden_states=True).hidden_states[-1][:, -1:]
        seq, m = torch.cat([seq, last], 1), torch.cat([m, torch.ones(2, 1, dtype=m.dtype)], 1)
    assert torch.allclose(seq[:, -4:], a, atol=1e-5)


def test_embeddings_in_give_the_same_clip(audioldm2_difflux: Any) -> None:
    assert embeds_vs_text(audioldm2_difflux, prompt="a cat") < 1e-6


def test_saved_folder_loads_in_diffusers(audioldm2_difflux: Any, tmp_path: Path) -> None:
    import diffusers

    audioldm2_difflux.save_pretrained(tmp_path)
    back = diffusers.AudioLDM2Pipeline.from_pretrained(tmp_path)
    back.set_progress_bar_config(disable=True)
    kw = {"prompt": "a cat", "num_inference_steps": 1, "audio_length_in_s": SECONDS}
    assert rel_diff(audioldm2_difflux(**kw, generator=gen(3)).audios, back(**kw, generator=gen(3)).audios) < 1e-4


BAD = {
    "transcription": ({"prompt": "a", "transcription": "hello"}, "text-to-speech"),
    "embeds-alone": ({"prompt_embeds": torch.zeros(1, 3, 32)}, "together with generated_prompt_embeds"),
    "new-tokens": ({"prompt": "a", "max_new_tokens": 0}, "max_new_tokens must be a positive int"),
    "mask-shape": ({"prompt_embeds": torch.zeros(1, 3, 32), "generated_prompt_embeds": torch.zeros(1, 8, 16),
                    "attention_mask": torch.ones(1, 4)}, "attention_mask must be shaped"),
    "pil": ({"prompt": "a", "output_type": "pil"}, "output_type='pil'"),
    "too-short": ({"prompt": "a", "audio_length_in_s": 1e-4}, "too short"),
}


@pytest.mark.parametrize("case", list(BAD), ids=list(BAD))
def test_bad_input_is_refused_before_any_model_runs(audioldm2_difflux: Any, case: str, monkeypatch: Any) -> None:
    kwargs, message = BAD[case]
    for name in ("unet", "language_model", "text_encoder"):
        monkeypatch.setattr(getattr(audioldm2_difflux, name), "forward", lambda *a, **k: pytest.fail("a model ran"))
    with pytest.raises((ValueError, TypeError)) as info:
        audioldm2_difflux(**kwargs, num_inference_steps=1)
    assert message in str(info.value)
