"""Spectrogram Diffusion: MIDI-to-audio with a T5 encoder of note tokens, a T5 encoder of the previous
segment's spectrogram, and a FiLM-conditioned T5 decoder that denoises the next segment's log-mel
spectrogram; a MelGAN (an ONNX model, run by ``onnxruntime``) turns the spectrogram into audio.

Hawthorne et al. 2022, "Multi-instrument Music Synthesis with Spectrogram Diffusion",
arXiv:2206.05408. Config keys and state-dict keys are Diffusers' (``T5FilmDecoder``,
``SpectrogramNotesEncoder``, ``SpectrogramContEncoder``, ``OnnxRuntimeModel``). The encoders' T5
blocks are transformers' ``T5Block``. ``onnxruntime`` is the ``[onnxruntime]`` extra.
"""

from __future__ import annotations

import math
import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from difflux.modeling import ModelMixin
from difflux.pipeline import DiffusionPipeline
from difflux.pipeline_utils import AudioPipelineOutput, DenoisingState, StepCallback, step_callback
from difflux.torch_utils import randn_tensor
from difflux_models.layers.attention import Attention
from torch import nn

from .extras import require

__all__ = [
    "OnnxRuntimeModel",
    "SpectrogramContEncoder",
    "SpectrogramDiffusionPipeline",
    "SpectrogramNotesEncoder",
    "T5FilmDecoder",
]

#: spectrogram frames per segment (what the published model was trained on)
TARGET_FEATURE_LENGTH = 256


# -- T5 pieces -----------------------------------------------------------------------------------


class T5LayerNorm(nn.Module):
    """RMS norm without mean subtraction or bias (T5's ``LayerNorm``); statistics in float32."""

    def __init__(self, hidden_size: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.variance_epsilon = eps

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        variance = hidden_states.to(torch.float32).pow(2).mean(-1, keepdim=True)
        hidden_states = hidden_states * torch.rsqrt(variance + self.variance_epsilon)
        if self.weight.dtype in (torch.float16, torch.bfloat16):
            hidden_states = hidden_states.to(self.weight.dtype)
        out: torch.Tensor = self.weight * hidden_states
        return out


def _gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * torch.pow(x, 3.0))))


class T5FiLMLayer(nn.Module):
    """FiLM: ``x * (1 + scale) + shift``, scale and shift projected from the conditioning."""

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__()
        self.scale_bias = nn.Linear(in_features, out_features * 2, bias=False)

    def forward(self, x: torch.Tensor, conditioning_emb: torch.Tensor) -> torch.Tensor:
        scale, shift = torch.chunk(self.scale_bias(conditioning_emb), 2, -1)
        out: torch.Tensor = x * (1 + scale) + shift
        return out


class T5DenseGatedActDense(nn.Module):
    """Gated-GELU feed-forward: ``wo(gelu(wi_0 x) * wi_1 x)``."""

    def __init__(self, d_model: int, d_ff: int, dropout_rate: float) -> None:
        super().__init__()
        self.wi_0 = nn.Linear(d_model, d_ff, bias=False)
        self.wi_1 = nn.Linear(d_model, d_ff, bias=False)
        self.wo = nn.Linear(d_ff, d_model, bias=False)
        self.dropout = nn.Dropout(dropout_rate)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        gated = _gelu_tanh(self.wi_0(hidden_states)) * self.wi_1(hidden_states)
        out: torch.Tensor = self.wo(self.dropout(gated))
        return out


def _t5_attention(d_model: int, d_kv: int, num_heads: int) -> Attention:
    # T5 does not scale the logits by 1/sqrt(d)
    return Attention(query_dim=d_model, heads=num_heads, dim_head=d_kv, out_bias=False, scale_qk=False)


class T5LayerSelfAttentionCond(nn.Module):
    """Pre-norm self-attention whose normed input is FiLM-modulated by the noise-time embedding."""

    def __init__(self, d_model: int, d_kv: int, num_heads: int, dropout_rate: float) -> None:
        super().__init__()
        self.layer_norm = T5LayerNorm(d_model)
        self.FiLMLayer = T5FiLMLayer(in_features=d_model * 4, out_features=d_model)
        self.attention = _t5_attention(d_model, d_kv, num_heads)
        self.dropout = nn.Dropout(dropout_rate)

    def forward(self, hidden_states: torch.Tensor, conditioning_emb: torch.Tensor | None = None) -> torch.Tensor:
        normed = self.layer_norm(hidden_states)
        if conditioning_emb is not None:
            normed = self.FiLMLayer(normed, conditioning_emb)
        out: torch.Tensor = hidden_states + self.dropout(self.attention(normed))
        return out


class T5LayerCrossAttention(nn.Module):
    """Pre-norm cross-attention to the encodings (an additive mask bias)."""

    def __init__(self, d_model: int, d_kv: int, num_heads: int, dropout_rate: float, layer_norm_epsilon: float) -> None:
        super().__init__()
        self.attention = _t5_attention(d_model, d_kv, num_heads)
        self.layer_norm = T5LayerNorm(d_model, eps=layer_norm_epsilon)
        self.dropout = nn.Dropout(dropout_rate)

    def forward(self, hidden_states: torch.Tensor, key_value_states: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        normed = self.layer_norm(hidden_states)
        out = self.attention(normed, encoder_hidden_states=key_value_states, attention_mask=bias)
        result: torch.Tensor = hidden_states + self.dropout(out)
        return result


class T5LayerFFCond(nn.Module):
    """Pre-norm, FiLM-modulated gated feed-forward."""

    def __init__(self, d_model: int, d_ff: int, dropout_rate: float, layer_norm_epsilon: float) -> None:
        super().__init__()
        self.DenseReluDense = T5DenseGatedActDense(d_model=d_model, d_ff=d_ff, dropout_rate=dropout_rate)
        self.film = T5FiLMLayer(in_features=d_model * 4, out_features=d_model)
        self.layer_norm = T5LayerNorm(d_model, eps=layer_norm_epsilon)
        self.dropout = nn.Dropout(dropout_rate)

    def forward(self, hidden_states: torch.Tensor, conditioning_emb: torch.Tensor | None = None) -> torch.Tensor:
        states = self.layer_norm(hidden_states)
        if conditioning_emb is not None:
            states = self.film(states, conditioning_emb)
        out: torch.Tensor = hidden_states + self.dropout(self.DenseReluDense(states))
        return out


class DecoderLayer(nn.Module):
    """Self-attention, cross-attention, feed-forward (keys ``layer.0`` / ``layer.1`` / ``layer.2``)."""

    def __init__(
        self, d_model: int, d_kv: int, num_heads: int, d_ff: int, dropout_rate: float, layer_norm_epsilon: float = 1e-6
    ) -> None:
        super().__init__()
        self.layer = nn.ModuleList(
            [
                T5LayerSelfAttentionCond(d_model, d_kv, num_heads, dropout_rate),
                T5LayerCrossAttention(d_model, d_kv, num_heads, dropout_rate, layer_norm_epsilon),
                T5LayerFFCond(d_model, d_ff, dropout_rate, layer_norm_epsilon),
            ]
        )

    def forward(
        self, hidden_states: torch.Tensor, conditioning_emb: torch.Tensor, encoded: torch.Tensor, mask: torch.Tensor
    ) -> torch.Tensor:
        hidden_states = self.layer[0](hidden_states, conditioning_emb)
        bias = torch.where(mask > 0, 0, -1e10).to(encoded.dtype).squeeze(1)
        hidden_states = self.layer[1](hidden_states, encoded, bias)
        out: torch.Tensor = self.layer[2](hidden_states, conditioning_emb)
        return out


def _timestep_embedding(t: torch.Tensor, dim: int, max_period: float) -> torch.Tensor:
    """Sinusoidal embedding ``[sin, cos]`` of continuous times ``t`` (batch,), ``dim`` features; frequencies
    ``max_period ** (-i / (half - 1))`` (the highest is 1, the lowest ``1 / max_period``)."""
    half = dim // 2
    exponent = -math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / (half - 1)
    args = t[:, None].float() * torch.exp(exponent)[None, :]
    emb = torch.cat([torch.sin(args), torch.cos(args)], dim=-1)
    if dim % 2:
        emb = torch.nn.functional.pad(emb, (0, 1, 0, 0))
    return emb


class T5FilmDecoder(ModelMixin):
    """T5 decoder with FiLM conditioning on the noise time: denoises a spectrogram segment
    ``(batch, targets_length, input_dims)`` while attending to the encodings of the notes and of the
    previous segment.
    """

    def __init__(
        self,
        input_dims: int = 128,
        targets_length: int = 256,
        max_decoder_noise_time: float = 2000.0,
        d_model: int = 768,
        num_layers: int = 12,
        num_heads: int = 12,
        d_kv: int = 64,
        d_ff: int = 2048,
        dropout_rate: float = 0.1,
    ) -> None:
        super().__init__()
        self.conditioning_emb = nn.Sequential(
            nn.Linear(d_model, d_model * 4, bias=False),
            nn.SiLU(),
            nn.Linear(d_model * 4, d_model * 4, bias=False),
            nn.SiLU(),
        )
        self.position_encoding = nn.Embedding(targets_length, d_model)
        self.position_encoding.weight.requires_grad = False
        self.continuous_inputs_projection = nn.Linear(input_dims, d_model, bias=False)
        self.dropout = nn.Dropout(p=dropout_rate)
        self.decoders = nn.ModuleList(
            DecoderLayer(d_model=d_model, d_kv=d_kv, num_heads=num_heads, d_ff=d_ff, dropout_rate=dropout_rate)
            for _ in range(num_layers)
        )
        self.decoder_norm = T5LayerNorm(d_model)
        self.post_dropout = nn.Dropout(p=dropout_rate)
        self.spec_out = nn.Linear(d_model, input_dims, bias=False)

    def forward(
        self,
        encodings_and_masks: Sequence[tuple[torch.Tensor, torch.Tensor]],
        decoder_input_tokens: torch.Tensor,
        decoder_noise_time: torch.Tensor,
    ) -> torch.Tensor:
        """The denoised prediction ``(batch, length, input_dims)``.

        :param encodings_and_masks: ``[(encoded (batch, S_i, d_model), mask (batch, S_i)), ...]``.
        :param decoder_input_tokens: the noisy segment ``(batch, length, input_dims)``.
        :param decoder_noise_time: ``(batch,)`` in ``[0, 1)`` (timestep / training steps).
        :raises ValueError: when ``decoder_noise_time`` is not one value per sample.
        """
        batch, length = decoder_input_tokens.shape[:2]
        if tuple(decoder_noise_time.shape) != (batch,):
            raise ValueError(f"T5FilmDecoder: decoder_noise_time must have shape ({batch},), got "
                             f"{tuple(decoder_noise_time.shape)}")
        max_time = self.config.max_decoder_noise_time
        times = _timestep_embedding(decoder_noise_time * max_time, self.config.d_model, max_time).to(self.dtype)
        conditioning = self.conditioning_emb(times).unsqueeze(1)
        positions = torch.arange(length, device=decoder_input_tokens.device).expand(batch, length)
        y = self.dropout(self.continuous_inputs_projection(decoder_input_tokens) + self.position_encoding(positions))
        queries = torch.ones((batch, length), device=y.device, dtype=y.dtype)
        encoded = torch.cat([e for e, _ in encodings_and_masks], dim=1)
        mask = torch.cat([(queries.unsqueeze(-1) * m.unsqueeze(-2)).unsqueeze(-3) for _, m in encodings_and_masks], -1)
        for layer in self.decoders:
            y = layer(y, conditioning, encoded, mask)
        out: torch.Tensor = self.spec_out(self.post_dropout(self.decoder_norm(y)))
        return out


class _T5Encoder(ModelMixin):
    """Shared body of the two encoders: positions, transformers' ``T5Block`` layers, final norm."""

    encoders: nn.ModuleList

    def _build(self, d_model: int, dropout_rate: float, num_layers: int, num_heads: int, d_kv: int, d_ff: int,
               feed_forward_proj: str, is_decoder: bool, vocab_size: int | None = None) -> None:
        from transformers import T5Config
        from transformers.models.t5.modeling_t5 import T5Block

        self.dropout_pre = nn.Dropout(p=dropout_rate)
        extra: dict[str, Any] = {"vocab_size": vocab_size} if vocab_size is not None else {}
        config = T5Config(
            d_model=d_model, num_heads=num_heads, d_kv=d_kv, d_ff=d_ff, dropout_rate=dropout_rate,
            feed_forward_proj=feed_forward_proj, is_decoder=is_decoder, is_encoder_decoder=False, **extra,
        )
        self.encoders = nn.ModuleList(T5Block(config) for _ in range(num_layers))
        self.layer_norm = T5LayerNorm(d_model)
        self.dropout_post = nn.Dropout(p=dropout_rate)

    def _encode(self, x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.dropout_pre(x)
        bias = ((1.0 - mask[:, None, None, :].to(x.dtype)) * torch.finfo(x.dtype).min)
        for layer in self.encoders:
            x = layer(x, bias)[0]
        return self.dropout_post(self.layer_norm(x)), mask


class SpectrogramNotesEncoder(_T5Encoder):
    """T5 encoder of note-event tokens ``(batch, S)`` (0 is padding) with learned absolute positions."""

    def __init__(
        self,
        max_length: int,
        vocab_size: int,
        d_model: int,
        dropout_rate: float,
        num_layers: int,
        num_heads: int,
        d_kv: int,
        d_ff: int,
        feed_forward_proj: str = "gated-gelu",  # the published encoders' (Diffusers requires it; no default there)
        is_decoder: bool = False,
    ) -> None:
        super().__init__()
        self.token_embedder = nn.Embedding(vocab_size, d_model)
        self.position_encoding = nn.Embedding(max_length, d_model)
        self.position_encoding.weight.requires_grad = False
        self._build(d_model, dropout_rate, num_layers, num_heads, d_kv, d_ff, feed_forward_proj, is_decoder, vocab_size)

    def forward(
        self, encoder_input_tokens: torch.Tensor, encoder_inputs_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(encoded (batch, S, d_model), mask)``."""
        x = self.token_embedder(encoder_input_tokens)
        x = x + self.position_encoding(torch.arange(encoder_input_tokens.shape[1], device=x.device))
        return self._encode(x, encoder_inputs_mask)


class SpectrogramContEncoder(_T5Encoder):
    """T5 encoder of the previous segment's spectrogram ``(batch, S, input_dims)``."""

    def __init__(
        self,
        input_dims: int,
        targets_context_length: int,
        d_model: int,
        dropout_rate: float,
        num_layers: int,
        num_heads: int,
        d_kv: int,
        d_ff: int,
        feed_forward_proj: str = "gated-gelu",  # the published encoders' (Diffusers requires it; no default there)
        is_decoder: bool = False,
    ) -> None:
        super().__init__()
        self.input_proj = nn.Linear(input_dims, d_model, bias=False)
        self.position_encoding = nn.Embedding(targets_context_length, d_model)
        self.position_encoding.weight.requires_grad = False
        self._build(d_model, dropout_rate, num_layers, num_heads, d_kv, d_ff, feed_forward_proj, is_decoder)

    def forward(
        self, encoder_inputs: torch.Tensor, encoder_inputs_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(encoded (batch, S, d_model), mask)``; positions are rolled by the first sample's valid length
        (as the published model was trained)."""
        x = self.input_proj(encoder_inputs)
        positions = torch.arange(encoder_inputs.shape[1], device=x.device)
        lengths = encoder_inputs_mask.sum(-1)
        positions = torch.roll(positions.unsqueeze(0), tuple(lengths.tolist()), dims=0)
        return self._encode(x + self.position_encoding(positions), encoder_inputs_mask)


# -- MelGAN through onnxruntime ------------------------------------------------------------------


class OnnxRuntimeModel:
    """An ONNX model run by ``onnxruntime`` (Diffusers' ``OnnxRuntimeModel``): a folder holding
    ``model.onnx``; calling it with numpy keyword inputs returns the session's outputs.

    :raises difflux_audio.extras.MissingExtraError: when onnxruntime is not installed.
    """

    FILE: ClassVar[str] = "model.onnx"

    def __init__(self, model: Any = None, model_path: str | os.PathLike[str] | None = None) -> None:
        self.model = model
        self.model_path = Path(model_path) if model_path is not None else None

    @classmethod
    def from_pretrained(
        cls, path: str | os.PathLike[str], file_name: str | None = None, provider: str | None = None, **_options: Any
    ) -> OnnxRuntimeModel:
        """Open ``path/model.onnx`` (or ``file_name``) on ``provider`` (default: the CPU)."""
        ort = require("onnxruntime", "the MelGAN of Spectrogram Diffusion (OnnxRuntimeModel)")
        file = Path(path) / (file_name or cls.FILE)
        if not file.is_file():
            raise FileNotFoundError(f"OnnxRuntimeModel: {file} does not exist; the folder must hold {cls.FILE}")
        session = ort.InferenceSession(str(file), providers=[provider or "CPUExecutionProvider"])
        return cls(session, file)

    def save_pretrained(self, save_directory: str | os.PathLike[str], **_options: Any) -> None:
        """Copy the ONNX file into ``save_directory``."""
        if self.model_path is None:
            raise ValueError("OnnxRuntimeModel: no file to save (the model was not loaded from a folder)")
        target = Path(save_directory)
        target.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(self.model_path, target / self.FILE)

    def __call__(self, **inputs: Any) -> Any:
        return self.model.run(None, {k: np.asarray(v) for k, v in inputs.items()})


# -- the pipeline --------------------------------------------------------------------------------


class SpectrogramDiffusionPipeline(DenoisingState, DiffusionPipeline):
    """Synthesize audio from note tokens, one 256-frame segment after another: each segment is
    denoised by :class:`T5FilmDecoder` attending to its notes and to the previous segment's
    spectrogram; MelGAN (``melgan``, optional, an :class:`OnnxRuntimeModel`) makes the waveform.
    """

    _optional_components: ClassVar[tuple[str, ...]] = ("melgan",)
    model_cpu_offload_seq = "notes_encoder->continuous_encoder->decoder"
    _callback_tensor_inputs = ("latents",)
    #: what ``difflux generate`` writes for this pipeline (a ``.wav``)
    output_kind: ClassVar[str] = "audio"
    #: MelGAN's sample rate (Hz)
    sample_rate: int = 16000

    notes_encoder: Any
    continuous_encoder: Any
    decoder: Any
    scheduler: Any
    melgan: Any

    def __init__(
        self, notes_encoder: Any, continuous_encoder: Any, decoder: Any, scheduler: Any, melgan: Any = None
    ) -> None:
        super().__init__()
        self.min_value = math.log(1e-5)  # MelGAN's training range of log-mel values
        self.max_value = 4.0
        self.n_dims = 128
        self.register_modules(
            notes_encoder=notes_encoder,
            continuous_encoder=continuous_encoder,
            decoder=decoder,
            scheduler=scheduler,
            melgan=melgan,
        )

    def scale_features(self, features: torch.Tensor, output_range: Sequence[float] = (-1.0, 1.0),
                       clip: bool = False) -> torch.Tensor:
        """Log-mel features → the network's range."""
        low, high = output_range
        if clip:
            features = torch.clip(features, self.min_value, self.max_value)
        return (features - self.min_value) / (self.max_value - self.min_value) * (high - low) + low

    def scale_to_features(self, outputs: torch.Tensor, input_range: Sequence[float] = (-1.0, 1.0),
                          clip: bool = False) -> torch.Tensor:
        """The network's range → log-mel features."""
        low, high = input_range
        outputs = torch.clip(outputs, low, high) if clip else outputs
        return (outputs - low) / (high - low) * (self.max_value - self.min_value) + self.min_value

    def encode(self, input_tokens: torch.Tensor, continuous_inputs: torch.Tensor,
               continuous_mask: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """``[(notes encoding, mask), (previous segment encoding, mask)]``."""
        notes = self.notes_encoder(encoder_input_tokens=input_tokens, encoder_inputs_mask=input_tokens > 0)
        context = self.continuous_encoder(encoder_inputs=continuous_inputs, encoder_inputs_mask=continuous_mask)
        return [notes, context]

    def decode(self, encodings_and_masks: Any, input_tokens: torch.Tensor, noise_time: Any) -> torch.Tensor:
        """The decoder's prediction for the noisy segment at ``noise_time`` (in ``[0, 1)``)."""
        t = noise_time if torch.is_tensor(noise_time) else torch.tensor([noise_time], device=input_tokens.device)
        t = t.reshape(-1)[:1].to(input_tokens.device) * torch.ones(input_tokens.shape[0], device=input_tokens.device)
        out: torch.Tensor = self.decoder(
            encodings_and_masks=encodings_and_masks, decoder_input_tokens=input_tokens, decoder_noise_time=t
        )
        return out

    def _check(self, input_tokens: Any, num_inference_steps: Any, output_type: str) -> None:
        name = type(self).__name__
        if not isinstance(input_tokens, (list, tuple)) or not input_tokens or not all(
            isinstance(seg, (list, tuple, np.ndarray, torch.Tensor)) for seg in input_tokens
        ):
            raise TypeError(
                f"{name}: input_tokens must be a non-empty list of token lists (one per segment), as "
                "MidiProcessor(midi_file) returns"
            )
        limit = getattr(getattr(self.notes_encoder, "config", None), "max_length", None)
        too_long = [i for i, seg in enumerate(input_tokens) if isinstance(limit, int) and len(seg) > limit]
        if too_long:
            raise ValueError(
                f"{name}: segment {too_long[0]} of input_tokens has {len(input_tokens[too_long[0]])} tokens; the "
                f"notes encoder takes at most {limit} (its max_length)"
            )
        if isinstance(num_inference_steps, bool) or not isinstance(num_inference_steps, int) or num_inference_steps < 1:
            raise ValueError(f"{name}: num_inference_steps must be a positive int, got {num_inference_steps!r}")
        if output_type not in ("np", "mel"):
            raise ValueError(f"{name}: output_type={output_type!r}; choose 'np' (audio, needs melgan) or 'mel'")
        if output_type == "np" and self.melgan is None:
            raise ValueError(f"{name}: output_type='np' needs the melgan component; load it, or pass output_type='mel'")

    def __call__(
        self,
        input_tokens: list[list[int]] | None = None,
        generator: torch.Generator | None = None,
        num_inference_steps: int = 100,
        return_dict: bool = True,
        output_type: str = "np",
        callback: Any = None,
        callback_steps: int = 1,
        callback_on_step_end: StepCallback | None = None,
        callback_on_step_end_tensor_inputs: Sequence[str] = ("latents",),
        midi: str | os.PathLike[str] | bytes | None = None,
    ) -> Any:
        """Audio (``output_type="np"``, ``(1, samples)`` at 16 kHz through MelGAN) or the log-mel
        spectrogram (``"mel"``, ``(1, 256 * segments, 128)``) of ``input_tokens`` (one token list per
        segment, as :class:`~difflux_audio.midi.MidiProcessor` returns), or of ``midi`` (a MIDI file's
        path or bytes, read by ``MidiProcessor``: the ``[midi]`` extra; not in Diffusers).

        ``callback(segment, spectrogram so far)`` runs after every ``callback_steps`` segments;
        ``callback_on_step_end`` after each denoising step (``latents``: the noisy segment).

        :raises ValueError | TypeError: on bad input, before any model runs; both ``input_tokens`` and
            ``midi``, or neither, is a ``TypeError``.
        :raises FileNotFoundError | difflux_audio.midi.MidiError: a ``midi`` that is not a file, not
            MIDI, or holds no notes.
        """
        if midi is not None:
            if input_tokens is not None:
                raise TypeError(f"{type(self).__name__}: pass input_tokens or midi, not both")
            from .midi import MidiProcessor

            input_tokens = MidiProcessor()(midi)
        if input_tokens is None:
            raise TypeError(
                f"{type(self).__name__}: pass input_tokens (one token list per segment) or midi (a MIDI file)"
            )
        self._check(input_tokens, num_inference_steps, output_type)
        if isinstance(callback_steps, bool) or not isinstance(callback_steps, int) or callback_steps < 1:
            raise ValueError(f"{type(self).__name__}: callback_steps must be a positive int, got {callback_steps!r}")
        self._interrupt = False
        device, dtype = self.device, self.decoder.dtype
        previous = torch.zeros((1, TARGET_FEATURE_LENGTH, self.n_dims), device=device, dtype=dtype)
        full = np.zeros([1, 0, self.n_dims], np.float32)
        for i, tokens in enumerate(input_tokens):
            context_mask = torch.full((1, TARGET_FEATURE_LENGTH), i > 0, dtype=torch.bool, device=device)
            context = self.scale_features(previous, output_range=(-1.0, 1.0), clip=True)
            encodings = self.encode(
                input_tokens=torch.as_tensor(np.asarray([tokens]), dtype=torch.int32, device=device),
                continuous_inputs=context,
                continuous_mask=context_mask,
            )
            x = randn_tensor(context.shape, generator=generator, device=device, dtype=dtype)
            self.scheduler.set_timesteps(num_inference_steps)
            self._num_timesteps = len(self.scheduler.timesteps)
            for j, t in enumerate(self.progress_bar(self.scheduler.timesteps)):
                prediction = self.decode(encodings, x, t / self.scheduler.config.num_train_timesteps)
                x = self.scheduler.step(prediction, t, x, generator=generator).prev_sample
                if callback_on_step_end is not None:
                    x = step_callback(self, callback_on_step_end, j, t, {"latents": x},
                                      callback_on_step_end_tensor_inputs)["latents"]
            mel = self.scale_to_features(x, input_range=(-1.0, 1.0))
            previous = mel[:1]
            full = np.concatenate([full, mel[:1].cpu().float().numpy()], axis=1)
            if callback is not None and i % callback_steps == 0:
                callback(i, full)
        self.maybe_free_model_hooks()
        if output_type == "np":
            audio = self.melgan(input_features=full.astype(np.float32))
            output: Any = audio[0] if isinstance(audio, (list, tuple)) else audio
            rate: int | None = self.sample_rate
        else:
            output, rate = full, None
        return AudioPipelineOutput(audios=output, sample_rate=rate) if return_dict else (output,)
