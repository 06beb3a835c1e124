"""Tiny, offline components for tests of the audio pipelines: a RoBERTa (CLAP) tokenizer, CLAP
text and audio models, a HiFi-GAN vocoder and the tiny UNet / VAE settings of AudioLDM.

Nothing is downloaded; sizes follow Diffusers' fast tests of these pipelines.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

__all__ = [
    "AUDIOLDM_UNET",
    "AUDIO_VAE",
    "seeded_",
    "tiny_clap_model",
    "tiny_clap_text_config",
    "tiny_hifigan",
    "tiny_roberta_tokenizer",
]

#: AudioLDM's UNet scaled down (block types, class embedding and concat as published)
AUDIOLDM_UNET: dict[str, Any] = {
    "block_out_channels": (8, 16),
    "layers_per_block": 1,
    "norm_num_groups": 8,
    "sample_size": 32,
    "in_channels": 4,
    "out_channels": 4,
    "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D"),
    "up_block_types": ("CrossAttnUpBlock2D", "UpBlock2D"),
    "cross_attention_dim": (8, 16),
    "class_embed_type": "simple_projection",
    "projection_class_embeddings_input_dim": 8,
    "class_embeddings_concat": True,
}

#: the mel-spectrogram VAE scaled down (one input channel)
AUDIO_VAE: dict[str, Any] = {
    "block_out_channels": [8, 16],
    "in_channels": 1,
    "out_channels": 1,
    "norm_num_groups": 8,
    "down_block_types": ["DownEncoderBlock2D", "DownEncoderBlock2D"],
    "up_block_types": ["UpDecoderBlock2D", "UpDecoderBlock2D"],
    "latent_channels": 4,
}

_SPECIALS = ("<s>", "<pad>", "</s>", "<unk>")


def tiny_roberta_tokenizer(folder: str | Path, model_max_length: int = 77) -> Any:
    """A ``RobertaTokenizer`` (CLAP's) over every byte, no merges: ``<s>=0, <pad>=1, </s>=2, <unk>=3``."""
    from difflux_transformers.testing import byte_level_symbols
    from transformers import RobertaTokenizer

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    vocab = {token: i for i, token in enumerate(_SPECIALS)}
    for symbol in byte_level_symbols():
        vocab.setdefault(symbol, len(vocab))
    vocab["<mask>"] = len(vocab)
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n", encoding="utf-8")
    return RobertaTokenizer(
        str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=model_max_length
    )


def tiny_clap_text_config(**overrides: Any) -> dict[str, Any]:
    """Keyword arguments of a tiny ``ClapTextConfig`` (8 features, one layer) for the tokenizer above."""
    return {
        "bos_token_id": 0,
        "eos_token_id": 2,
        "hidden_size": 8,
        "intermediate_size": 37,
        "layer_norm_eps": 1e-05,
        "num_attention_heads": 1,
        "num_hidden_layers": 1,
        "pad_token_id": 1,
        "vocab_size": 261,
        "projection_dim": 8,
        **overrides,
    }


def tiny_clap_model(seed: int = 0) -> Any:
    """A tiny ``ClapModel`` (text and audio towers, 8-dimensional projection)."""
    import torch
    from transformers import ClapAudioConfig, ClapConfig, ClapModel, ClapTextConfig

    torch.manual_seed(seed)
    text = ClapTextConfig(**tiny_clap_text_config(hidden_size=16, intermediate_size=37, num_attention_heads=2))
    audio = ClapAudioConfig(  # type: ignore[call-arg]
        spec_size=64,
        window_size=4,
        num_mel_bins=64,
        intermediate_size=37,
        layer_norm_eps=1e-05,
        depths=[2, 2],
        num_attention_heads=[2, 2],
        num_hidden_layers=2,
        hidden_size=192,
        projection_dim=8,
        patch_size=2,
        patch_stride=2,
        patch_embed_input_channels=4,
    )
    config = ClapConfig(text_config=text.to_dict(), audio_config=audio.to_dict(), projection_dim=8)
    return ClapModel(config).eval()


def tiny_hifigan(seed: int = 0, model_in_dim: int = 8) -> Any:
    """A tiny ``SpeechT5HifiGan`` vocoder: ``model_in_dim`` mel bins, 4 samples per frame at 16 kHz."""
    import torch
    from transformers import SpeechT5HifiGan, SpeechT5HifiGanConfig

    torch.manual_seed(seed)
    config = SpeechT5HifiGanConfig(
        model_in_dim=model_in_dim,
        sampling_rate=16000,
        upsample_initial_channel=16,
        upsample_rates=[2, 2],
        upsample_kernel_sizes=[4, 4],
        resblock_kernel_sizes=[3, 7],
        resblock_dilation_sizes=[[1, 3, 5], [1, 3, 5]],
        normalize_before=False,
    )
    return SpeechT5HifiGan(config).eval()


def seeded_(module: Any, seed: int = 0, scale: float = 0.1) -> Any:
    """Overwrite every parameter of ``module`` with ``scale * N(0, 1)`` noise drawn from a generator
    seeded by ``seed`` and the parameter's name: the same values under any library version that
    keeps the state-dict keys (what makes reference tensors of a pinned oracle reproducible)."""
    import zlib

    import torch

    with torch.no_grad():
        for name, param in module.named_parameters():
            g = torch.Generator().manual_seed(seed + zlib.crc32(name.encode()))
            param.copy_(torch.randn(param.shape, generator=g) * scale)
    return module
