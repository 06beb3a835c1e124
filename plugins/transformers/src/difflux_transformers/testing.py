"""Tiny, offline ``transformers`` components for tests: a CLIP tokenizer, CLIP text and vision
encoders, and a DPT depth estimator.

Nothing is downloaded. The tokenizer is read from a ``vocab.json`` / ``merges.txt`` pair that
:func:`write_tiny_clip_vocab` writes: every byte as a token, the same with the end-of-word
mark, a few merged words and the two CLIP special tokens.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

__all__ = [
    "byte_level_symbols",
    "tiny_clip_text_config",
    "tiny_clip_text_model",
    "tiny_clip_tokenizer",
    "tiny_clip_vision",
    "tiny_dpt",
    "tiny_t5_encoder",
    "tiny_t5_tokenizer",
    "write_tiny_clip_vocab",
]

#: Words that get their own token (through BPE merges), so prompts tokenize to fewer pieces.
WORDS: tuple[str, ...] = ("a", "cat", "dog", "photo", "of", "the", "on", "red", "blue", "astronaut", "horse")


def _byte_symbols() -> list[str]:
    """The printable stand-ins byte-level BPE uses for the 256 byte values (GPT-2 / CLIP order)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    symbols = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in symbols:
            symbols[b] = chr(256 + extra)
            extra += 1
    return list(symbols.values())


def byte_level_symbols() -> list[str]:
    """The 256 printable stand-ins of byte-level BPE (GPT-2, RoBERTa, CLIP), in byte order: the base
    vocabulary of a tiny offline tokenizer of any of those families."""
    return _byte_symbols()


def write_tiny_clip_vocab(folder: str | Path, words: tuple[str, ...] = WORDS) -> Path:
    """Write ``vocab.json`` and ``merges.txt`` of a tiny CLIP BPE vocabulary into ``folder``: every byte
    (alone and word-final), one left-to-right merge chain per word of ``words`` (each becomes one
    token) and the two CLIP special tokens."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    symbols = _byte_symbols()
    vocab: dict[str, int] = {}
    for token in [*symbols, *(s + "</w>" for s in symbols)]:
        vocab.setdefault(token, len(vocab))
    merges: list[str] = []
    for word in words:
        # merge left to right: c+a -> ca, ca+t</w> -> cat</w>
        pieces = [*word[:-1], word[-1] + "</w>"]
        while len(pieces) > 1:
            merges.append(f"{pieces[0]} {pieces[1]}")
            pieces = [pieces[0] + pieces[1], *pieces[2:]]
            vocab.setdefault(pieces[0], len(vocab))
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    unique = list(dict.fromkeys(merges))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(unique) + "\n", encoding="utf-8")
    return folder


def tiny_clip_tokenizer(folder: str | Path, model_max_length: int = 77) -> CLIPTokenizer:
    """A ``CLIPTokenizer`` over the tiny vocabulary, written into (and read from) ``folder``."""
    from transformers import CLIPTokenizer

    write_tiny_clip_vocab(folder)
    tokenizer: CLIPTokenizer = CLIPTokenizer.from_pretrained(
        str(folder), model_max_length=model_max_length, local_files_only=True
    )
    return tokenizer


def tiny_clip_text_config(**overrides: Any) -> dict[str, Any]:
    """Keyword arguments of a tiny ``CLIPTextConfig`` that fits :func:`tiny_clip_tokenizer`."""
    config: dict[str, Any] = {
        "vocab_size": 1000,
        "hidden_size": 32,
        "intermediate_size": 37,
        "num_hidden_layers": 5,
        "num_attention_heads": 4,
        "max_position_embeddings": 77,
        "layer_norm_eps": 1e-5,
        "hidden_act": "gelu",
        "projection_dim": 32,
        "bos_token_id": 0,
        "eos_token_id": 2,
        "pad_token_id": 1,
    }
    config.update(overrides)
    return config


def tiny_clip_text_model(
    seed: int = 0, *, projection: bool = False, **overrides: Any
) -> CLIPTextModel | CLIPTextModelWithProjection:
    """A randomly initialised tiny CLIP text encoder (with a projection head when ``projection``)."""
    import torch
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    config = CLIPTextConfig(**tiny_clip_text_config(**overrides))
    torch.manual_seed(seed)
    model = CLIPTextModelWithProjection(config) if projection else CLIPTextModel(config)
    model.eval()
    return model


def tiny_clip_vision(seed: int = 0, image_size: int = 32) -> tuple[Any, Any]:
    """A random tiny ``CLIPVisionModelWithProjection`` (32-dim embeddings) and a ``CLIPImageProcessor`` for it."""
    import torch
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

    config = CLIPVisionConfig(
        hidden_size=32,
        projection_dim=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=37,
        image_size=image_size,
        patch_size=8,
    )
    torch.manual_seed(seed)
    processor = CLIPImageProcessor(
        size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size}
    )
    return CLIPVisionModelWithProjection(config).eval(), processor


def tiny_dpt(seed: int = 0, image_size: int = 32) -> tuple[Any, Any]:
    """A random tiny ``DPTForDepthEstimation`` (ViT backbone) and a ``DPTImageProcessor`` resizing to its input."""
    import torch
    from transformers import DPTConfig, DPTForDepthEstimation, DPTImageProcessor

    config = DPTConfig(
        image_size=image_size,
        patch_size=8,
        hidden_size=32,
        num_hidden_layers=4,
        backbone_out_indices=[0, 1, 2, 3],
        num_attention_heads=4,
        intermediate_size=37,
        neck_hidden_sizes=[8, 8, 16, 16],
        fusion_hidden_size=16,
    )
    torch.manual_seed(seed)
    processor = DPTImageProcessor(
        size={"height": image_size, "width": image_size}, keep_aspect_ratio=False, ensure_multiple_of=1
    )
    return DPTForDepthEstimation(config).eval(), processor


#: Pieces of the tiny T5 (Unigram) vocabulary after ``<pad>`` (0), ``</s>`` (1), ``<unk>`` (2): a few
#: whole words, then single letters, digits and the word-start mark, so any ASCII text tokenizes.
T5_PIECES: tuple[str, ...] = (
    *(f"\u2581{w}" for w in WORDS),
    "\u2581",
    *"abcdefghijklmnopqrstuvwxyz0123456789.,!?'-",
)


def tiny_t5_tokenizer(folder: str | Path) -> Any:
    """A ``T5Tokenizer`` over a tiny Unigram vocabulary (:data:`T5_PIECES`), saved into ``folder`` and read back."""
    from transformers import T5Tokenizer

    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)]
    vocab += [(piece, -1.0 - 0.01 * i) for i, piece in enumerate(dict.fromkeys(T5_PIECES))]
    T5Tokenizer(vocab=vocab, extra_ids=0).save_pretrained(str(folder))
    return T5Tokenizer.from_pretrained(str(folder), local_files_only=True)


def tiny_t5_encoder(seed: int = 0, d_model: int = 32, vocab_size: int = 128) -> Any:
    """A seeded two-layer ``T5EncoderModel`` (``d_model`` wide) for the tiny T5 tokenizer."""
    import torch
    from transformers import T5Config, T5EncoderModel

    config = T5Config(
        vocab_size=vocab_size, d_model=d_model, d_kv=8, d_ff=37, num_layers=2, num_heads=4,
        relative_attention_num_buckets=8, dropout_rate=0.0,
    )  # fmt: skip
    torch.manual_seed(seed)
    return T5EncoderModel(config).eval()
