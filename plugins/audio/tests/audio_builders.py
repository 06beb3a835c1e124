"""Tiny audio pipelines built the same way under any transformers version.

Used by the tests (transformers 5) and by ``oracle_tf4.py`` (the pinned ``transformers<5`` oracle
that writes ``data/*.safetensors``). Every weight is drawn by :func:`difflux_audio.testing.seeded_`
from the parameter's name, so both sides hold the same numbers.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

#: the clip length the tests generate, in seconds (256 frames, 1024 samples at 16 kHz)
SECONDS = 0.064

#: every case a reference is stored for: name -> (pipeline, call keyword arguments)
REFERENCE_CASES: dict[str, tuple[str, dict[str, Any]]] = {
    "musicldm-one": ("musicldm", {"prompt": "a cat", "num_inference_steps": 2, "audio_length_in_s": SECONDS}),
    "musicldm-ranked": (
        "musicldm",
        {
            "prompt": ["a cat", "dog barking"],
            "negative_prompt": ["noise", "hum"],
            "num_waveforms_per_prompt": 2,
            "num_inference_steps": 2,
            "audio_length_in_s": SECONDS,
        },
    ),
    "audioldm2-gpt2model": (
        "audioldm2-gpt2model",
        {
            "prompt": ["a cat", "dog barking"],
            "negative_prompt": ["noise", "hum"],
            "num_inference_steps": 2,
            "audio_length_in_s": SECONDS,
        },
    ),
    "audioldm2-gpt2model-ranked": (
        "audioldm2-gpt2model",
        {"prompt": "rain", "num_waveforms_per_prompt": 2, "num_inference_steps": 2, "audio_length_in_s": SECONDS},
    ),
    "audioldm2-tts-gpt2model": (
        "audioldm2-tts-gpt2model",
        {
            "prompt": ["a man speaking", "a woman whispering"],
            "transcription": ["hello world", "good day to you"],
            "max_new_tokens": 4,
            "num_inference_steps": 2,
            "audio_length_in_s": SECONDS,
        },
    ),
}


def _scheduler() -> Any:
    from diffusers import DDIMScheduler

    return DDIMScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False, set_alpha_to_one=False
    )


def _unet_vae(seed: int) -> tuple[Any, Any]:
    from difflux_audio.testing import AUDIO_VAE, AUDIOLDM_UNET, seeded_
    from diffusers import AutoencoderKL, UNet2DConditionModel

    return seeded_(UNet2DConditionModel(**AUDIOLDM_UNET), seed), seeded_(AutoencoderKL(**AUDIO_VAE), seed + 1)


def clap_feature_extractor() -> Any:
    """A ``ClapFeatureExtractor`` for the tiny CLAP audio tower (64 mel bins, 48 kHz)."""
    from transformers import ClapFeatureExtractor

    return ClapFeatureExtractor(feature_size=64, sampling_rate=48000, hop_length=7900, max_length_s=10)


def musicldm(tmp: Path, seed: int = 0) -> Any:
    """A tiny Diffusers ``MusicLDMPipeline`` (it runs only under transformers 4)."""
    from difflux_audio.testing import seeded_, tiny_clap_model, tiny_hifigan, tiny_roberta_tokenizer
    from diffusers import MusicLDMPipeline

    unet, vae = _unet_vae(seed)
    pipe = MusicLDMPipeline(
        vae=vae,
        text_encoder=seeded_(tiny_clap_model(), seed + 2),
        tokenizer=tiny_roberta_tokenizer(tmp / "tokenizer"),
        feature_extractor=clap_feature_extractor(),
        unet=unet,
        scheduler=_scheduler(),
        vocoder=seeded_(tiny_hifigan(), seed + 3),
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


#: AudioLDM 2's UNet scaled down: per block a self-attention, a GPT-2 (16) and a T5 (32) attention
AUDIOLDM2_UNET: dict[str, Any] = {
    "block_out_channels": (8, 16),
    "layers_per_block": 1,
    "norm_num_groups": 8,
    "sample_size": 32,
    "in_channels": 4,
    "out_channels": 4,
    "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D"),
    "up_block_types": ("CrossAttnUpBlock2D", "UpBlock2D"),
    "cross_attention_dim": [[None, 16, 32], [None, 16, 32]],
    "attention_head_dim": 2,
}


def t5_tokenizer(tmp: Path) -> Any:
    """The tiny T5 tokenizer stored in ``data/tiny_t5`` (loads under transformers 4 and 5)."""
    import transformers

    folder = Path(__file__).parent / "data" / "tiny_t5"
    if int(transformers.__version__.split(".")[0]) < 5:  # the oracle: read the same tokenizer.json
        return transformers.T5TokenizerFast(
            tokenizer_file=str(folder / "tokenizer.json"), eos_token="</s>", unk_token="<unk>", pad_token="<pad>",
            extra_ids=0, model_max_length=32,
        )
    return transformers.AutoTokenizer.from_pretrained(str(folder), local_files_only=True)


def audioldm2(tmp: Path, seed: int = 0, *, language_model: str = "GPT2LMHeadModel") -> Any:
    """A tiny Diffusers ``AudioLDM2Pipeline`` (T5 second encoder); ``language_model``: ``"GPT2LMHeadModel"``
    or ``"GPT2Model"`` (Diffusers runs the latter only under transformers 4)."""
    import transformers
    from difflux_audio.testing import AUDIO_VAE, seeded_, tiny_clap_model, tiny_hifigan, tiny_roberta_tokenizer
    from diffusers import AudioLDM2Pipeline, AudioLDM2ProjectionModel, AudioLDM2UNet2DConditionModel, AutoencoderKL
    from transformers import GPT2Config, T5Config, T5EncoderModel

    gpt = GPT2Config(n_embd=16, n_head=2, n_layer=1, vocab_size=64, n_ctx=99, n_positions=99)
    lm = seeded_(getattr(transformers, language_model)(gpt).eval(), seed + 4)
    lm.config.max_new_tokens = 8
    t5 = T5Config(
        vocab_size=128, d_model=32, d_kv=8, d_ff=37, num_layers=2, num_heads=4, relative_attention_num_buckets=8,
        dropout_rate=0.0, decoder_start_token_id=0,
    )
    pipe = AudioLDM2Pipeline(
        vae=seeded_(AutoencoderKL(**AUDIO_VAE), seed + 1),
        text_encoder=seeded_(tiny_clap_model(), seed + 2),
        text_encoder_2=seeded_(T5EncoderModel(t5).eval(), seed + 5),
        projection_model=seeded_(AudioLDM2ProjectionModel(8, 32, 16), seed + 6),
        language_model=lm,
        tokenizer=tiny_roberta_tokenizer(tmp / "tokenizer"),
        tokenizer_2=t5_tokenizer(tmp),
        feature_extractor=clap_feature_extractor(),
        unet=seeded_(AudioLDM2UNet2DConditionModel(**AUDIOLDM2_UNET), seed),
        scheduler=_scheduler(),
        vocoder=seeded_(tiny_hifigan(), seed + 3),
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def audioldm2_gpt2model(tmp: Path, seed: int = 0) -> Any:
    """:func:`audioldm2` with a ``GPT2Model`` language model (as some published checkpoints name it)."""
    return audioldm2(tmp, seed, language_model="GPT2Model")


#: the tiny VITS phoneme vocabulary: ``_`` pads (id 0, which the speech checkpoints' end phoneme replaces)
VITS_SYMBOLS = ("_", " ", *"abcdefghijklmnopqrstuvwxyz'")
#: phonemes a transcription is padded to (the projection model's learned position embedding has as many)
VITS_MAX_LENGTH = 24
#: the tiny VITS text encoder's width (the UNet's third attention and the projection read it)
VITS_HIDDEN = 8
#: weight scale of the text-to-speech pipeline's VITS, projection, language model and UNet: at the
#: default 0.1 the UNet barely hears its conditioning (another transcription moves the latents by
#: 1e-4, the parity tolerance); at 0.5 it moves them by ~7e-2 while difflux stays within ~3e-6
TTS_WEIGHT_SCALE = 0.5


def tiny_vits_tokenizer(folder: Path, model_max_length: int = VITS_MAX_LENGTH) -> Any:
    """A ``VitsTokenizer`` over letters, space and apostrophe (no phonemizer, no blanks), its
    ``vocab.json`` written into ``folder``."""
    import json

    from transformers import VitsTokenizer

    folder.mkdir(parents=True, exist_ok=True)
    vocab = folder / "vocab.json"
    vocab.write_text(json.dumps({s: i for i, s in enumerate(VITS_SYMBOLS)}), encoding="utf-8")
    return VitsTokenizer(
        str(vocab), pad_token="_", unk_token="_", add_blank=False, phonemize=False, model_max_length=model_max_length
    )


def tiny_vits_model(seed: int = 0, scale: float = 0.1) -> Any:
    """A tiny transformers ``VitsModel`` (one 8-wide text-encoder layer; every other part at its
    smallest); 184 phoneme embeddings, so the end phoneme 182 of the speech checkpoints fits. Its
    weights are ``scale * N(0, 1)`` drawn by :func:`difflux_audio.testing.seeded_`."""
    from difflux_audio.testing import seeded_
    from transformers import VitsConfig, VitsModel

    config = VitsConfig(
        vocab_size=184, hidden_size=VITS_HIDDEN, num_hidden_layers=1, num_attention_heads=2, ffn_dim=16,
        flow_size=4, spectrogram_bins=8, upsample_initial_channel=8, upsample_rates=[2], upsample_kernel_sizes=[4],
        resblock_kernel_sizes=[3], resblock_dilation_sizes=[[1]], duration_predictor_filter_channels=8,
        duration_predictor_num_flows=1, depth_separable_num_layers=1, prior_encoder_num_flows=1,
        prior_encoder_num_wavenet_layers=1, posterior_encoder_num_wavenet_layers=1, layerdrop=0.0, pad_token_id=0,
    )
    return seeded_(VitsModel(config).eval(), seed, scale)


def audioldm2_tts(tmp: Path, seed: int = 0, *, language_model: str = "GPT2LMHeadModel") -> Any:
    """A tiny Diffusers text-to-speech ``AudioLDM2Pipeline``: :func:`audioldm2` with a ``VitsModel`` /
    ``VitsTokenizer`` in T5's place and a projection model with the VITS position embedding."""
    from difflux_audio.testing import seeded_
    from diffusers import AudioLDM2Pipeline, AudioLDM2ProjectionModel, AudioLDM2UNet2DConditionModel

    base = audioldm2(tmp, seed, language_model=language_model)
    unet = {**AUDIOLDM2_UNET, "cross_attention_dim": [[None, 16, VITS_HIDDEN], [None, 16, VITS_HIDDEN]]}
    projection = AudioLDM2ProjectionModel(
        8, VITS_HIDDEN, 16, use_learned_position_embedding=True, max_seq_length=VITS_MAX_LENGTH
    )
    scale = TTS_WEIGHT_SCALE
    pipe = AudioLDM2Pipeline(
        **{
            **base.components,
            "text_encoder_2": tiny_vits_model(seed + 5, scale),
            "tokenizer_2": tiny_vits_tokenizer(tmp / "tokenizer_2"),
            "projection_model": seeded_(projection, seed + 6, scale),
            "language_model": seeded_(base.language_model, seed + 4, scale),
            "unet": seeded_(AudioLDM2UNet2DConditionModel(**unet), seed, scale),
        }
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def audioldm2_tts_gpt2model(tmp: Path, seed: int = 0) -> Any:
    """:func:`audioldm2_tts` with a ``GPT2Model`` language model (Diffusers runs it only under transformers 4)."""
    return audioldm2_tts(tmp, seed, language_model="GPT2Model")


BUILDERS = {
    "musicldm": musicldm,
    "audioldm2-gpt2model": audioldm2_gpt2model,
    "audioldm2-tts-gpt2model": audioldm2_tts_gpt2model,
}
