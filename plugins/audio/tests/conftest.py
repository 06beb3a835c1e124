"""Tiny audio pipelines built with Diffusers (the test-only oracle) and saved for difflux.

Sizes follow Diffusers' fast tests: a two-block UNet of 8/16 channels, a two-block mel VAE,
8-feature CLAP text models, a HiFi-GAN of 4 samples per frame. A 0.064 s clip is 256 frames,
64 x 2 latents, 1024 samples at 16 kHz.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

_HERE = str(Path(__file__).parent)
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)

from audio_builders import SECONDS as SECONDS  # noqa: E402  (re-exported for the tests)


def rel_diff(a: Any, b: Any) -> float:
    """Largest absolute difference of two waveforms over the largest magnitude of ``b``."""
    a = a.detach().cpu().numpy() if isinstance(a, torch.Tensor) else np.asarray(a)
    b = b.detach().cpu().numpy() if isinstance(b, torch.Tensor) else np.asarray(b)
    if a.shape != b.shape:
        raise AssertionError(f"shapes differ: {a.shape} vs {b.shape}")
    return float(np.abs(a.astype(np.float64) - b).max() / max(float(np.abs(b).max()), 1e-30))


def diffusers_diff(theirs: Any, ours: Any, **kwargs: Any) -> float:
    """:func:`rel_diff` of difflux's clips (``ours``) to Diffusers' (``theirs``) for the same call
    (2 steps, :data:`SECONDS`, seed 0 unless ``kwargs`` say otherwise); difflux's must carry 16 kHz."""
    call = {"num_inference_steps": 2, "audio_length_in_s": SECONDS, **kwargs}
    expected = theirs(**call, generator=torch.Generator().manual_seed(0)).audios
    out = ours(**call, generator=torch.Generator().manual_seed(0))
    if out.sample_rate != 16000:
        raise AssertionError(f"sample_rate {out.sample_rate}, expected 16000")
    return rel_diff(out.audios, expected)


def reference_diff(folder: Path, case: str, references: dict[str, torch.Tensor]) -> tuple[Any, float]:
    """``(difflux pipeline loaded from folder, rel_diff of its clips to the stored reference of case)``
    (every 4th sample, as :mod:`oracle_tf4` stores them)."""
    from audio_builders import REFERENCE_CASES
    from difflux_stable_diffusion.testing import load_difflux

    pipe = load_difflux(folder)
    out = pipe(**REFERENCE_CASES[case][1], generator=torch.Generator().manual_seed(0)).audios[:, ::4]
    return pipe, rel_diff(out, references[case])


def embeds_vs_text(pipe: Any, **text: Any) -> float:
    """:func:`rel_diff` of an AudioLDM 2 clip made from ``pipe.encode_prompt(**text, guidance=True)``'s
    embeddings to the clip made from the text itself (2 steps, :data:`SECONDS`, seed 2)."""
    e = pipe.encode_prompt(**text, guidance=True)
    kw = {"num_inference_steps": 2, "audio_length_in_s": SECONDS}
    by_text = pipe(**text, generator=torch.Generator().manual_seed(2), **kw).audios
    by_embeds = pipe(
        prompt_embeds=e.prompt_embeds, attention_mask=e.attention_mask,
        generated_prompt_embeds=e.generated_prompt_embeds,
        negative_prompt_embeds=e.negative.prompt_embeds, negative_attention_mask=e.negative.attention_mask,
        negative_generated_prompt_embeds=e.negative.generated_prompt_embeds,
        generator=torch.Generator().manual_seed(2), **kw,
    ).audios
    return rel_diff(by_embeds, by_text)


@pytest.fixture(autouse=True)
def _quiet_diffusers() -> None:
    logging.getLogger("diffusers").setLevel(logging.ERROR)


def _audioldm_parts(tmp: Path) -> dict[str, Any]:
    from difflux_audio.testing import (
        AUDIO_VAE,
        AUDIOLDM_UNET,
        tiny_clap_text_config,
        tiny_hifigan,
        tiny_roberta_tokenizer,
    )
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import ClapTextConfig, ClapTextModelWithProjection

    torch.manual_seed(0)
    unet = UNet2DConditionModel(**AUDIOLDM_UNET)
    torch.manual_seed(0)
    vae = AutoencoderKL(**AUDIO_VAE)
    torch.manual_seed(0)
    text_encoder = ClapTextModelWithProjection(ClapTextConfig(**tiny_clap_text_config())).eval()
    scheduler = DDIMScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False, set_alpha_to_one=False
    )
    return {
        "vae": vae,
        "text_encoder": text_encoder,
        "tokenizer": tiny_roberta_tokenizer(tmp / "tokenizer"),
        "unet": unet,
        "scheduler": scheduler,
        "vocoder": tiny_hifigan(),
    }


@pytest.fixture(scope="session")
def audioldm(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Path]:
    """``(Diffusers AudioLDMPipeline, the folder it saved)``."""
    import diffusers

    tmp = tmp_path_factory.mktemp("audioldm")
    pipe = diffusers.AudioLDMPipeline(**_audioldm_parts(tmp))
    pipe.set_progress_bar_config(disable=True)
    pipe.save_pretrained(tmp / "pipe")
    return pipe, tmp / "pipe"


@pytest.fixture(scope="session")
def audioldm_difflux(audioldm: tuple[Any, Path]) -> Any:
    from difflux_stable_diffusion.testing import load_difflux

    return load_difflux(audioldm[1])


def _saved(tmp_path_factory: pytest.TempPathFactory, name: str, build: Any) -> tuple[Any, Path]:
    tmp = tmp_path_factory.mktemp(name)
    pipe = build(tmp)
    pipe.save_pretrained(tmp / "pipe")
    return pipe, tmp / "pipe"


@pytest.fixture(scope="session")
def audioldm2(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Path]:
    """``(Diffusers AudioLDM2Pipeline with GPT2LMHeadModel, the folder it saved)``."""
    import audio_builders

    return _saved(tmp_path_factory, "audioldm2", audio_builders.audioldm2)


@pytest.fixture(scope="session")
def audioldm2_difflux(audioldm2: tuple[Any, Path]) -> Any:
    from difflux_stable_diffusion.testing import load_difflux

    return load_difflux(audioldm2[1])


@pytest.fixture(scope="session")
def reference_folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The pipelines of the stored transformers-4 references, built here and saved (Diffusers cannot run
    them under transformers 5, but builds and saves them)."""
    import audio_builders

    return {
        name: _saved(tmp_path_factory, name, build)[1] for name, build in audio_builders.BUILDERS.items()
    }


@pytest.fixture(scope="session")
def references() -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(Path(__file__).parent / "data" / "reference_tf4.safetensors"))


def _extended_mask(self: Any, mask: torch.Tensor, shape: Any) -> torch.Tensor:
    extended = mask[:, None, None, :].to(self.dtype)
    return (1.0 - extended) * torch.finfo(self.dtype).min


def tiny_spectrogram_diffusion(max_length: int = 32, vocab_size: int = 100) -> Any:
    """A tiny Diffusers ``SpectrogramDiffusionPipeline`` (no melgan), notes of up to ``max_length`` tokens.

    Diffusers 0.42.1's note / continuous encoders call ``get_extended_attention_mask``, a transformers 4
    helper that transformers 5 dropped; the oracle gets that helper back here, written as transformers 4
    defines it (a keep-mask ``(batch, seq)`` -> ``(1 - mask[:, None, None, :]) * finfo(dtype).min``).
    """
    import diffusers
    from diffusers.pipelines.deprecated.spectrogram_diffusion import SpectrogramContEncoder, SpectrogramNotesEncoder

    for cls in (SpectrogramNotesEncoder, SpectrogramContEncoder):
        if not hasattr(cls, "get_extended_attention_mask"):
            cls.get_extended_attention_mask = _extended_mask  # type: ignore[attr-defined]
    torch.manual_seed(0)
    enc = {"d_model": 32, "dropout_rate": 0.1, "num_layers": 1, "num_heads": 2, "d_kv": 16, "d_ff": 37,
           "feed_forward_proj": "gated-gelu"}
    pipe = diffusers.SpectrogramDiffusionPipeline(
        notes_encoder=SpectrogramNotesEncoder(max_length=max_length, vocab_size=vocab_size, **enc).eval(),
        continuous_encoder=SpectrogramContEncoder(input_dims=128, targets_context_length=256, **enc).eval(),
        decoder=diffusers.T5FilmDecoder(
            input_dims=128, targets_length=256, d_model=32, num_layers=1, num_heads=2, d_kv=16, d_ff=37
        ).eval(),
        scheduler=diffusers.DDPMScheduler(),
        melgan=None,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def export_melgan_stand_in(folder: Path) -> Path:
    """Write ``folder/model.onnx``: a MelGAN stand-in of 4 samples per frame (needs the onnx package)."""

    class Vocoder(torch.nn.Module):
        def forward(self, input_features: torch.Tensor) -> torch.Tensor:
            return torch.tanh(input_features.mean(-1)).repeat_interleave(4, dim=1)

    folder.mkdir(parents=True, exist_ok=True)
    torch.onnx.export(
        Vocoder(), (torch.randn(1, 8, 128),), str(folder / "model.onnx"),
        input_names=["input_features"], output_names=["audio"], dynamic_axes={"input_features": {1: "frames"}},
        dynamo=False,
    )
    return folder
