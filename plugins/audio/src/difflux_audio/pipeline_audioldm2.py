"""AudioLDM 2: text-to-audio where a GPT-2 language model turns CLAP and T5 embeddings into the
"audio language of music" the UNet attends to (Liu et al. 2023, arXiv:2308.05734).

Text → CLAP (one normalised vector) and T5 (a sequence) → :class:`AudioLDM2ProjectionModel` →
GPT-2 generates ``max_new_tokens`` hidden states (``GPT2Model`` or ``GPT2LMHeadModel``, written on
the plain forward with a key/value cache, so it needs no ``generate`` internals and runs on
transformers 4 and 5) → the UNet attends to them and to the T5 states → VAE → mel → HiFi-GAN.

Text-to-speech checkpoints put a VITS text encoder (transformers' ``VitsModel``, Kim et al. 2021,
arXiv:2106.06103; only its phoneme encoder runs) in T5's place: ``prompt`` describes the voice
(CLAP), ``transcription`` is what it says (``VitsTokenizer`` → phoneme states).
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Sequence
from typing import Any, ClassVar

import torch
from difflux.offload import runs_forward_hooks
from difflux.pipeline_utils import LegacyCallback, StepCallback
from difflux_stable_diffusion._base import Denoise, fit
from difflux_stable_diffusion.prompts import Prompt, negative_prompts, prompt_list, repeat_per_image, tokenize

from ._common import AudioInputs, check_audio_inputs, clap_text_embeds, rank_waveforms
from .pipeline_audioldm import LatentAudioBase

__all__ = ["AudioLDM2Embeds", "AudioLDM2Pipeline", "generate_language_model", "mark_phoneme_end", "vits_text_states"]

Generator = torch.Generator | Sequence[torch.Generator] | None

#: how many hidden states the language model generates when neither the call nor its config says
DEFAULT_NEW_TOKENS = 8

#: the phoneme id AudioLDM 2's speech checkpoints close each transcription with: it is written over
#: the first padding id (:data:`PHONEME_PAD_ID`) and attended to (the VITS embedding must hold it)
PHONEME_END_ID = 182
#: the padding phoneme id of the speech checkpoints' ``VitsTokenizer``
PHONEME_PAD_ID = 0


def mark_phoneme_end(input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Close each phoneme sequence as AudioLDM 2's speech checkpoints were trained: in each row of
    ``input_ids`` ``(batch, seq)`` int64 the first :data:`PHONEME_PAD_ID` becomes
    :data:`PHONEME_END_ID` and ``attention_mask`` ``(batch, seq)`` keeps that position. Rows with no
    padding are left as they are. Returns new tensors (the inputs are not changed).
    """
    pad = input_ids == PHONEME_PAD_ID
    first = pad.to(torch.int8).argmax(dim=1, keepdim=True)
    at = torch.zeros_like(pad).scatter_(1, first, True) & pad.any(dim=1, keepdim=True)
    return input_ids.masked_fill(at, PHONEME_END_ID), attention_mask.masked_fill(at, 1)


@runs_forward_hooks  # the phoneme encoder is a part of the component: its offload hooks run around it
def vits_text_states(vits: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """The last hidden states ``(batch, seq, hidden_size)`` of ``vits.text_encoder``, the phoneme encoder
    of a transformers ``VitsModel`` (its duration predictor, flow and decoder do not run), for
    ``input_ids`` / ``attention_mask`` ``(batch, seq)`` int64; padding is masked in every layer."""
    out = vits.text_encoder(input_ids, attention_mask=attention_mask, padding_mask=attention_mask.unsqueeze(-1))
    states: torch.Tensor = out[0]
    return states


def generate_language_model(
    language_model: Any, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor | None, max_new_tokens: int
) -> torch.Tensor:
    """Greedy continuation in embedding space: feed ``inputs_embeds`` ``(batch, seq, hidden)``, append
    the last layer's final hidden state as the next input, ``max_new_tokens`` times (reusing the
    key/value cache). Returns the ``(batch, max_new_tokens, hidden)`` generated states.

    Works with ``GPT2Model`` and ``GPT2LMHeadModel`` (any model taking ``inputs_embeds``,
    ``past_key_values``, ``use_cache`` and returning ``hidden_states``) on transformers 4 and 5.
    """
    # transformers 5 names the cache argument ``cache`` (``past_key_values`` before)
    forward = getattr(language_model, "forward", language_model)
    cache_arg = "cache" if "cache" in inspect.signature(forward).parameters else "past_key_values"
    past: Any = None
    step = inputs_embeds
    mask = attention_mask
    generated: list[torch.Tensor] = []
    for _ in range(max_new_tokens):
        out = language_model(
            inputs_embeds=step,
            attention_mask=mask,
            use_cache=True,
            output_hidden_states=True,
            return_dict=True,
            **{cache_arg: past},
        )
        step = out.hidden_states[-1][:, -1:, :]
        generated.append(step)
        past = getattr(out, "past_key_values", None) if cache_arg == "past_key_values" else out.get(
            "cache", getattr(out, "past_key_values", None)
        )
        if mask is not None:
            mask = torch.cat([mask, mask.new_ones((mask.shape[0], 1))], dim=-1)
    return torch.cat(generated, dim=1)


@dataclasses.dataclass
class AudioLDM2Embeds:
    """What conditions AudioLDM 2's UNet, per clip: the second encoder's states ``prompt_embeds``
    ``(B, S2, dim_2)`` with ``attention_mask`` ``(B, S2)``, and the language model's
    ``generated_prompt_embeds`` ``(B, max_new_tokens, lm_dim)``; ``negative`` holds the same for
    classifier-free guidance."""

    prompt_embeds: torch.Tensor
    attention_mask: torch.Tensor
    generated_prompt_embeds: torch.Tensor
    negative: AudioLDM2Embeds | None = None

    def repeat(self, n: int) -> AudioLDM2Embeds:
        """Each prompt's tensors repeated ``n`` times (``a a b b``)."""
        neg = self.negative.repeat(n) if self.negative is not None else None
        return AudioLDM2Embeds(
            repeat_per_image(self.prompt_embeds, n),
            repeat_per_image(self.attention_mask, n),
            repeat_per_image(self.generated_prompt_embeds, n),
            neg,
        )

    def stacked(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(prompt_embeds, attention_mask, generated)`` as the UNet sees them: negative first when guiding."""
        if self.negative is None:
            return self.prompt_embeds, self.attention_mask, self.generated_prompt_embeds
        n = self.negative
        return (
            torch.cat([n.prompt_embeds, self.prompt_embeds]),
            torch.cat([n.attention_mask, self.attention_mask]),
            torch.cat([n.generated_prompt_embeds, self.generated_prompt_embeds]),
        )


def _is_clip_length_tokenizer(tokenizer: Any) -> bool:
    """RoBERTa (CLAP) and VITS tokenizers pad to their full length; T5's to the longest prompt."""
    return type(tokenizer).__name__.removesuffix("Fast") in ("RobertaTokenizer", "VitsTokenizer")


class AudioLDM2Pipeline(LatentAudioBase):
    """Text-to-audio with AudioLDM 2: ``ClapModel`` (``text_encoder``), ``T5EncoderModel``
    (``text_encoder_2``), :class:`~.modeling_audioldm2.AudioLDM2ProjectionModel`, GPT-2
    (``language_model``), ``RobertaTokenizer`` / ``T5Tokenizer``, ``ClapFeatureExtractor``,
    :class:`~.modeling_audioldm2.AudioLDM2UNet2DConditionModel`, ``AutoencoderKL``, ``SpeechT5HifiGan``.

    Text-to-speech checkpoints have a ``VitsModel`` as ``text_encoder_2`` and a ``VitsTokenizer`` as
    ``tokenizer_2``: call them with ``prompt`` (the voice, for CLAP) and ``transcription`` (the words).
    """

    model_cpu_offload_seq = "text_encoder->text_encoder_2->projection_model->language_model->unet->vae->vocoder"
    _optional_components: ClassVar[tuple[str, ...]] = ()
    _callback_tensor_inputs = ("latents",)

    text_encoder: Any
    text_encoder_2: Any
    projection_model: Any
    language_model: Any
    tokenizer: Any
    tokenizer_2: Any
    feature_extractor: Any

    def __init__(
        self,
        vae: Any,
        text_encoder: Any,
        text_encoder_2: Any,
        projection_model: Any,
        language_model: Any,
        tokenizer: Any,
        tokenizer_2: Any,
        feature_extractor: Any,
        unet: Any,
        scheduler: Any,
        vocoder: Any,
    ) -> None:
        super().__init__()
        self.register_modules(
            vae=vae,
            text_encoder=text_encoder,
            text_encoder_2=text_encoder_2,
            projection_model=projection_model,
            language_model=language_model,
            tokenizer=tokenizer,
            tokenizer_2=tokenizer_2,
            feature_extractor=feature_extractor,
            unet=unet,
            scheduler=scheduler,
            vocoder=vocoder,
        )

    # -- text --------------------------------------------------------------------------------------

    @property
    def is_text_to_speech(self) -> bool:
        """Whether ``text_encoder_2`` is a VITS model (a text-to-speech checkpoint that needs ``transcription``)."""
        return getattr(getattr(self.text_encoder_2, "config", None), "model_type", None) == "vits"

    def _new_tokens(self, max_new_tokens: int | None) -> int:
        if max_new_tokens is not None:
            return int(max_new_tokens)
        configured = getattr(self.language_model.config, "max_new_tokens", None)
        return int(configured) if configured else DEFAULT_NEW_TOKENS

    def _encode_texts(
        self, texts: list[str], transcriptions: list[str] | None = None, *, negative_length: int | None = None
    ) -> tuple[torch.Tensor, ...]:
        """``(CLAP (B, 1, d), CLAP mask, second encoder states (B, S2, d2), its mask)`` of ``texts``
        (and, for a VITS second encoder, of ``transcriptions``).

        ``negative_length``: negative prompts pad the second encoder's tokens to this length.
        """
        device = self.device
        clap_length = None if negative_length is None else self.tokenizer.model_max_length
        clap = tokenize(self.tokenizer, texts, clap_length, warn=negative_length is None)
        clap_embeds = clap_text_embeds(self.text_encoder, clap.input_ids.to(device), clap.attention_mask.to(device))
        clap_embeds = clap_embeds[:, None, :]
        clap_mask = torch.ones((len(texts), 1), dtype=torch.long, device=device)
        if self.is_text_to_speech:
            states, mask = self._speech_states(len(texts), transcriptions, negative=negative_length is not None)
            return clap_embeds, clap_mask, states, mask
        tok = self.tokenizer_2
        if negative_length is not None and not _is_clip_length_tokenizer(tok):
            second = tok(texts, padding="max_length", max_length=negative_length, truncation=True, return_tensors="pt")
        elif _is_clip_length_tokenizer(tok):
            second = tokenize(tok, texts, warn=negative_length is None)
        else:
            second = tok(texts, padding=True, max_length=tok.model_max_length, truncation=True, return_tensors="pt")
        ids, mask = second.input_ids.to(device), second.attention_mask.to(device)
        states = self.text_encoder_2(ids, attention_mask=mask)[0]
        return clap_embeds, clap_mask, states, mask

    def _speech_states(
        self, batch: int, transcriptions: list[str] | None, *, negative: bool
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """VITS phoneme states ``(batch, model_max_length, hidden_size)`` and mask of the transcriptions; the
        negative side (``negative``) is all zeros with nothing attended, as the speech checkpoints were trained."""
        device, tok = self.device, self.tokenizer_2
        if negative:
            shape = (batch, int(tok.model_max_length))
            hidden = int(self.text_encoder_2.config.hidden_size)
            zeros = torch.zeros((*shape, hidden), dtype=self.text_encoder_2.dtype, device=device)
            return zeros, torch.zeros(shape, dtype=torch.long, device=device)
        if transcriptions is None:
            raise ValueError(
                f"{type(self).__name__}: this is a text-to-speech checkpoint (text_encoder_2 is a VitsModel); "
                "pass transcription= (the words to speak) with prompt (the voice)"
            )
        phonemes = tokenize(tok, transcriptions)
        ids, mask = mark_phoneme_end(phonemes.input_ids, phonemes.attention_mask)
        ids, mask = ids.to(device), mask.to(device)
        return vits_text_states(self.text_encoder_2, ids, mask), mask

    def _condition(
        self, texts: list[str], new_tokens: int, transcriptions: list[str] | None = None, *,
        negative_length: int | None = None,
    ) -> AudioLDM2Embeds:
        clap, clap_mask, states, mask = self._encode_texts(texts, transcriptions, negative_length=negative_length)
        projected = self.projection_model(
            hidden_states=clap, hidden_states_1=states, attention_mask=clap_mask, attention_mask_1=mask
        )
        generated = generate_language_model(
            self.language_model, projected.hidden_states, projected.attention_mask, new_tokens
        )
        return AudioLDM2Embeds(states, mask, generated)

    def encode_prompt(
        self,
        prompt: Prompt | None,
        *,
        transcription: Prompt | None = None,
        num_waveforms_per_prompt: int = 1,
        guidance: bool = False,
        negative_prompt: Prompt | None = None,
        prompt_embeds: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
        generated_prompt_embeds: torch.Tensor | None = None,
        negative_generated_prompt_embeds: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        negative_attention_mask: torch.Tensor | None = None,
        max_new_tokens: int | None = None,
    ) -> AudioLDM2Embeds:
        """The UNet's conditioning (:class:`AudioLDM2Embeds`), repeated per waveform.

        Text is encoded unless ``prompt_embeds`` and ``generated_prompt_embeds`` are given (a missing
        ``attention_mask`` keeps every token). With ``guidance`` the negative side comes from the
        ``negative_*`` embeddings, or from ``negative_prompt`` (empty prompts when ``None``).

        Text-to-speech checkpoints (:attr:`is_text_to_speech`) encode ``transcription`` (one per prompt)
        with the VITS phoneme encoder in place of T5; their negative side is CLAP's of ``negative_prompt``
        with all-zero, unattended phoneme states.

        :raises ValueError: a text-to-speech checkpoint encoding text without ``transcription``.
        """
        new_tokens = self._new_tokens(max_new_tokens)
        if prompt_embeds is None or generated_prompt_embeds is None:
            texts = prompt_list(prompt)
            if texts is None:
                raise ValueError("AudioLDM2Pipeline: pass prompt, or prompt_embeds with generated_prompt_embeds")
            embeds = self._condition(texts, new_tokens, prompt_list(transcription))
        else:
            mask = attention_mask
            if mask is None:
                mask = torch.ones(prompt_embeds.shape[:2], dtype=torch.long)
            embeds = AudioLDM2Embeds(prompt_embeds, mask, generated_prompt_embeds)
        batch = embeds.prompt_embeds.shape[0]
        if guidance:
            if negative_prompt_embeds is None or negative_generated_prompt_embeds is None:
                negatives = negative_prompts(negative_prompt, prompt, batch)
                neg = self._condition(negatives, new_tokens, negative_length=embeds.prompt_embeds.shape[1])
            else:
                neg_mask = negative_attention_mask
                if neg_mask is None:
                    neg_mask = torch.ones(negative_prompt_embeds.shape[:2], dtype=torch.long)
                neg = AudioLDM2Embeds(negative_prompt_embeds, neg_mask, negative_generated_prompt_embeds)
            embeds.negative = self._cast(neg)
        embeds = self._cast(embeds)
        return embeds.repeat(num_waveforms_per_prompt)

    def _cast(self, e: AudioLDM2Embeds) -> AudioLDM2Embeds:
        device = self.device
        return AudioLDM2Embeds(
            e.prompt_embeds.to(device=device, dtype=self.text_encoder_2.dtype),
            e.attention_mask.to(device=device),
            e.generated_prompt_embeds.to(device=device, dtype=self.language_model.dtype),
            e.negative,
        )

    # -- the loop --------------------------------------------------------------------------------

    def dual_conditioned(
        self, t: torch.Tensor, model_input: torch.Tensor, generated: torch.Tensor, second: torch.Tensor,
        mask: torch.Tensor,
    ) -> torch.Tensor:
        """The UNet's prediction attending to the generated states and the second encoder's states."""
        batch = model_input.shape[0]
        out: torch.Tensor = self.unet(
            self.scheduler.scale_model_input(model_input, t),
            t,
            encoder_hidden_states=generated,
            encoder_hidden_states_1=fit(second, batch),
            encoder_attention_mask_1=fit(mask, batch),
            return_dict=False,
        )[0]
        return out

    def _check(self, args: dict[str, Any]) -> int:
        name = type(self).__name__
        pairs = (
            ("prompt_embeds", "generated_prompt_embeds"),
            ("negative_prompt_embeds", "negative_generated_prompt_embeds"),
        )
        for first, second in pairs:
            if (args[first] is None) != (args[second] is None):
                raise ValueError(f"{name}: pass {first} together with {second} (the UNet attends to both)")
        for key in ("generated_prompt_embeds", "negative_generated_prompt_embeds"):
            value = args[key]
            if value is not None and (not isinstance(value, torch.Tensor) or value.ndim != 3):
                raise ValueError(f"{name}: {key} must be a (batch, tokens, features) tensor")
        for key, embeds in (("attention_mask", "prompt_embeds"), ("negative_attention_mask", "negative_prompt_embeds")):
            mask, states = args[key], args[embeds]
            if mask is not None and (states is None or tuple(mask.shape) != tuple(states.shape[:2])):
                raise ValueError(f"{name}: {key} must be shaped (batch, tokens) like {embeds}")
        tokens = args["max_new_tokens"]
        if tokens is not None and (isinstance(tokens, bool) or not isinstance(tokens, int) or tokens < 1):
            raise ValueError(f"{name}: max_new_tokens must be a positive int, got {tokens!r}")
        batch = check_audio_inputs(self, AudioInputs.of(args, pooled=False))
        self._check_transcription(args, batch)
        return batch

    def _check_transcription(self, args: dict[str, Any], batch: int) -> None:
        name = type(self).__name__
        transcription = args["transcription"]
        encodes_text = args["prompt_embeds"] is None or args["generated_prompt_embeds"] is None
        if not self.is_text_to_speech:
            if transcription is not None:
                second = type(self.text_encoder_2).__name__
                raise ValueError(
                    f"{name}: transcription= is read only by text-to-speech checkpoints (text_encoder_2 a VitsModel); "
                    f"this one's text_encoder_2 is a {second}: leave transcription out and describe the sound "
                    "in prompt, or load a speech checkpoint"
                )
            return
        if transcription is None:
            if encodes_text:
                raise ValueError(
                    f"{name}: this is a text-to-speech checkpoint (text_encoder_2 is a VitsModel): pass "
                    "transcription= (the words to speak: a string, or a list of strings, one per prompt) "
                    "along with prompt (the voice)"
                )
            return
        if not isinstance(transcription, str) and (
            not isinstance(transcription, (list, tuple)) or not all(isinstance(t, str) for t in transcription)
        ):
            raise TypeError(
                f"{name}: transcription must be a string or a list of strings, got {type(transcription).__name__}"
            )
        count = 1 if isinstance(transcription, str) else len(transcription)
        if count != batch:
            raise ValueError(
                f"{name}: got {count} transcription(s) for {batch} prompt(s); pass one transcription per prompt"
            )
        limit = int(self.tokenizer_2.model_max_length)
        states = getattr(self.projection_model.config, "max_seq_length", None)
        if getattr(self.projection_model.config, "use_learned_position_embedding", None) is not None and (
            states is not None and int(states) != limit
        ):
            raise ValueError(
                f"{name}: tokenizer_2 pads transcriptions to {limit} phonemes but the projection model's "
                f"position embedding has {states}; set tokenizer_2.model_max_length = {states}"
            )
        vocab = int(self.text_encoder_2.config.vocab_size)
        if vocab <= PHONEME_END_ID:
            raise ValueError(
                f"{name}: text_encoder_2 embeds {vocab} phonemes, but speech checkpoints end each transcription "
                f"with phoneme {PHONEME_END_ID}; use a VitsModel with vocab_size > {PHONEME_END_ID}"
            )

    def __call__(
        self,
        prompt: Prompt | None = None,
        transcription: Prompt | None = None,
        audio_length_in_s: float | None = None,
        num_inference_steps: int = 200,
        guidance_scale: float = 3.5,
        negative_prompt: Prompt | None = None,
        num_waveforms_per_prompt: int = 1,
        eta: float = 0.0,
        generator: Generator = None,
        latents: torch.Tensor | None = None,
        prompt_embeds: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
        generated_prompt_embeds: torch.Tensor | None = None,
        negative_generated_prompt_embeds: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        negative_attention_mask: torch.Tensor | None = None,
        max_new_tokens: int | None = None,
        return_dict: bool = True,
        callback: LegacyCallback | None = None,
        callback_steps: int | None = None,
        cross_attention_kwargs: dict[str, Any] | None = None,
        output_type: str = "np",
        callback_on_step_end: StepCallback | None = None,
        callback_on_step_end_tensor_inputs: Sequence[str] = ("latents",),
    ) -> Any:
        """Generate ``audio_length_in_s`` seconds (default: the UNet's ``sample_size``, 10.24 s published)
        per prompt: check → encode (CLAP, T5 or VITS, projection, GPT-2) → latents → denoise → decode → rank.

        :param transcription: text-to-speech checkpoints only (``text_encoder_2`` a ``VitsModel``; then
            required unless ``prompt_embeds`` and ``generated_prompt_embeds`` are given): the words to
            speak, a string or one string per prompt; ``prompt`` then describes the voice. Speech
            checkpoints were trained with ``max_new_tokens=512``.

        :param max_new_tokens: states the language model generates (default: its config's, else 8).
        :param num_waveforms_per_prompt: clips per prompt; with a text prompt and more than one they
            are ranked by CLAP, best first (needs the ``[librosa]`` extra).
        :returns: ``AudioPipelineOutput`` (``audios`` ``(batch, samples)``, ``sample_rate``) or ``(audios,)``.
        :raises ValueError | TypeError: on bad input, before any model runs.
        """
        args = locals()
        batch = self._check(args)
        frames = self.frames(audio_length_in_s)
        opts = self.sampling_of(locals())
        embeds = self.encode_prompt(
            prompt, transcription=transcription, num_waveforms_per_prompt=num_waveforms_per_prompt,
            guidance=opts.guidance,
            negative_prompt=negative_prompt, prompt_embeds=prompt_embeds,
            negative_prompt_embeds=negative_prompt_embeds, generated_prompt_embeds=generated_prompt_embeds,
            negative_generated_prompt_embeds=negative_generated_prompt_embeds, attention_mask=attention_mask,
            negative_attention_mask=negative_attention_mask, max_new_tokens=max_new_tokens,
        )
        second, mask, generated = embeds.stacked()
        steps = self.schedule(num_inference_steps)
        shape = self.spectrogram_latent_shape(batch * num_waveforms_per_prompt, frames)
        latents = self.prepare_latents(shape, embeds.prompt_embeds.dtype, generator, latents)
        run = Denoise(
            steps, generated, opts,
            predict=lambda i, t, x, g: self.dual_conditioned(t, x, g, second, mask),
        )
        latents = self.denoise(latents, run)
        if output_type == "latent":
            return self.audio_output(latents, "latent", return_dict)
        audio = self.waveforms(latents, frames)
        if num_waveforms_per_prompt > 1 and prompt is not None:
            audio = rank_waveforms(
                self.text_encoder, self.tokenizer, self.feature_extractor, prompt, audio,
                per_prompt=num_waveforms_per_prompt, sample_rate=self.sample_rate, device=self.device,
                dtype=embeds.prompt_embeds.dtype,
            )
        return self.audio_output(audio, output_type, return_dict)
