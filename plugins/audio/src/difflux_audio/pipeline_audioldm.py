"""AudioLDM and MusicLDM: text-to-audio with a latent diffusion model of mel spectrograms.

The text is embedded by CLAP (one vector per prompt), which conditions the UNet through its class
embedding (``class_embed_type="simple_projection"``); the VAE decodes a log-mel spectrogram and a
HiFi-GAN vocoder (``SpeechT5HifiGan``) turns it into a waveform. AudioLDM: Liu et al. 2023,
arXiv:2301.12503; MusicLDM: Chen et al. 2023, arXiv:2308.01546.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import torch
from difflux.pipeline_utils import AudioPipelineOutput, LegacyCallback, StepCallback
from difflux_stable_diffusion._base import Denoise, StableDiffusionBase
from difflux_stable_diffusion.prompts import Prompt, PromptEmbeds

from ._common import (
    AudioInputs,
    Frames,
    check_audio_inputs,
    encode_clap_prompt,
    rank_waveforms,
    spectrogram_frames,
    vocoder_waveform,
)

__all__ = ["AudioLDMPipeline", "LatentAudioBase", "MusicLDMPipeline"]

Generator = torch.Generator | Sequence[torch.Generator] | None


class LatentAudioBase(StableDiffusionBase):
    """Steps shared by the latent text-to-audio pipelines: spectrogram size, the UNet call, decoding
    to waveforms and the audio output (not registered; the concrete pipelines are).

    Outputs: ``AudioPipelineOutput.audios`` ``(batch * num_waveforms_per_prompt, samples)`` in
    ``[-1, 1]`` (numpy float32 for ``"np"``, a CPU tensor for ``"pt"``, the final latents for
    ``"latent"``) and ``sample_rate`` (Hz, the vocoder's).
    """

    model_cpu_offload_seq = "text_encoder->unet->vae"
    _optional_components: ClassVar[tuple[str, ...]] = ()
    #: what ``difflux generate`` writes for this pipeline (a ``.wav``)
    output_kind: ClassVar[str] = "audio"

    vocoder: Any

    @property
    def sample_rate(self) -> int:
        """The waveform's sample rate in Hz (the vocoder's ``sampling_rate``)."""
        return int(self.vocoder.config.sampling_rate)

    def frames(self, audio_length_in_s: float | None) -> Frames:
        """The spectrogram height of a clip (see :func:`~._common.spectrogram_frames`)."""
        return spectrogram_frames(
            type(self).__name__, self.vocoder, self.vae_scale_factor, self.unet.config.sample_size, audio_length_in_s
        )

    def spectrogram_latent_shape(self, total: int, frames: Frames) -> tuple[int, ...]:
        """``(total, latent channels, frames / f, mel bins / f)`` for the VAE's downscaling ``f``."""
        f = self.vae_scale_factor
        return (total, self.unet.config.in_channels, frames.height // f, int(self.vocoder.config.model_in_dim) // f)

    def class_conditioned(self, t: torch.Tensor, model_input: torch.Tensor, embeds: torch.Tensor) -> torch.Tensor:
        """The UNet's prediction conditioned through its class embedding (no cross-attention context)."""
        scaled = self.scheduler.scale_model_input(model_input, t)
        out: torch.Tensor = self.unet(
            scaled,
            t,
            encoder_hidden_states=None,
            class_labels=embeds,
            cross_attention_kwargs=self._cross_attention_kwargs,
            return_dict=False,
        )[0]
        return out

    def waveforms(self, latents: torch.Tensor, frames: Frames) -> torch.Tensor:
        """Latents → mel spectrogram (VAE) → waveform (vocoder), cut to the clip: ``(batch, samples)``."""
        return vocoder_waveform(self.vocoder, self.decode(latents))[:, : frames.keep]

    def audio_output(self, audio: torch.Tensor, output_type: str, return_dict: bool) -> Any:
        """``AudioPipelineOutput(audios, sample_rate)`` or ``(audios,)``; frees offload hooks."""
        self.maybe_free_model_hooks()
        rate = None if output_type == "latent" else self.sample_rate
        audios: Any = audio.numpy() if output_type == "np" else audio
        return AudioPipelineOutput(audios=audios, sample_rate=rate) if return_dict else (audios,)


class _ClapLatentAudio(LatentAudioBase):
    """AudioLDM / MusicLDM: CLAP text embedding → UNet class embedding; ``__call__`` is theirs."""

    _callback_tensor_inputs = ("latents", "prompt_embeds", "negative_prompt_embeds")

    text_encoder: Any
    tokenizer: Any

    def encode_prompt(
        self,
        prompt: Prompt | None,
        *,
        num_waveforms_per_prompt: int = 1,
        guidance: bool = False,
        negative_prompt: Prompt | None = None,
        prompt_embeds: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
    ) -> PromptEmbeds:
        """CLAP embeddings ``(batch * num_waveforms_per_prompt, projection_dim)`` (see ``encode_clap_prompt``)."""
        dtype = self.text_encoder.dtype if self.text_encoder is not None else self.unet.dtype
        return encode_clap_prompt(
            self.text_encoder,
            self.tokenizer,
            prompt,
            device=self.device,
            dtype=dtype,
            num_waveforms_per_prompt=num_waveforms_per_prompt,
            guidance=guidance,
            negative_prompt=negative_prompt,
            prompt_embeds=prompt_embeds,
            negative_prompt_embeds=negative_prompt_embeds,
        )

    def rank(self, prompt: Prompt | None, audio: torch.Tensor, per_prompt: int, dtype: torch.dtype) -> torch.Tensor:
        """Several waveforms per prompt, best first by CLAP (MusicLDM); AudioLDM keeps their order."""
        return audio

    def generate(self, args: dict[str, Any]) -> Any:
        """The run behind ``__call__``: check → encode → prepare latents → denoise → decode → rank."""
        width = self.unet.config.get("projection_class_embeddings_input_dim")
        batch = check_audio_inputs(self, AudioInputs.of(args, embeds_width=width))
        per_prompt = int(args["num_waveforms_per_prompt"])
        frames = self.frames(args["audio_length_in_s"])
        opts = self.sampling(
            args["guidance_scale"], 0.0, args["eta"], args["generator"], args["cross_attention_kwargs"],
            args["callback_on_step_end"], args["callback_on_step_end_tensor_inputs"],
            legacy=args["callback"], legacy_steps=args["callback_steps"],
        )
        embeds = self.encode_prompt(
            args["prompt"], num_waveforms_per_prompt=per_prompt, guidance=opts.guidance,
            negative_prompt=args["negative_prompt"], prompt_embeds=args["prompt_embeds"],
            negative_prompt_embeds=args["negative_prompt_embeds"],
        )
        steps = self.schedule(args["num_inference_steps"])
        shape = self.spectrogram_latent_shape(batch * per_prompt, frames)
        latents = self.prepare_latents(shape, embeds.embeds.dtype, args["generator"], args["latents"])
        run = Denoise(steps, embeds.for_unet(), opts, predict=lambda i, t, x, e: self.class_conditioned(t, x, e))
        latents = self.denoise(latents, run, embeds.negative)
        if args["output_type"] == "latent":
            return self.audio_output(latents, "latent", args["return_dict"])
        audio = self.waveforms(latents, frames)
        if per_prompt > 1 and args["prompt"] is not None:
            audio = self.rank(args["prompt"], audio, per_prompt, embeds.embeds.dtype)
        return self.audio_output(audio, args["output_type"], args["return_dict"])


class AudioLDMPipeline(_ClapLatentAudio):
    """Text-to-audio with AudioLDM: ``ClapTextModelWithProjection`` text encoder, ``RobertaTokenizer``,
    ``UNet2DConditionModel``, ``AutoencoderKL`` (mel spectrograms) and ``SpeechT5HifiGan`` vocoder."""

    def __init__(
        self, vae: Any, text_encoder: Any, tokenizer: Any, unet: Any, scheduler: Any, vocoder: Any
    ) -> None:
        super().__init__()
        self.register_modules(
            vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler, vocoder=vocoder
        )

    def __call__(
        self,
        prompt: Prompt | None = None,
        audio_length_in_s: float | None = None,
        num_inference_steps: int = 10,
        guidance_scale: float = 2.5,
        negative_prompt: Prompt | None = None,
        num_waveforms_per_prompt: int = 1,
        eta: float = 0.0,
        generator: Generator = None,
        latents: torch.Tensor | None = None,
        prompt_embeds: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
        return_dict: bool = True,
        callback: LegacyCallback | None = None,
        callback_steps: int | None = None,
        cross_attention_kwargs: dict[str, Any] | None = None,
        output_type: str = "np",
        callback_on_step_end: StepCallback | None = None,
        callback_on_step_end_tensor_inputs: Sequence[str] = ("latents",),
    ) -> Any:
        """Generate ``audio_length_in_s`` seconds (default: the UNet's ``sample_size``, 5.12 s published)
        of audio per prompt.

        :param prompt: text (or list of texts); or ``prompt_embeds`` ``(batch, projection_dim)``.
        :param num_waveforms_per_prompt: clips per prompt (AudioLDM does not rank them).
        :param guidance_scale: classifier-free guidance runs above 1.
        :param output_type: ``"np"`` (default), ``"pt"`` or ``"latent"``.
        :returns: ``AudioPipelineOutput`` (``audios`` ``(batch, samples)``, ``sample_rate``) or ``(audios,)``.
        :raises ValueError | TypeError: on bad input, before any model runs.
        """
        return self.generate(locals())


class MusicLDMPipeline(_ClapLatentAudio):
    """Text-to-music with MusicLDM: ``ClapModel`` (text and audio towers: it embeds the prompt and
    ranks the waveforms), ``RobertaTokenizer``, ``ClapFeatureExtractor``, ``UNet2DConditionModel``,
    ``AutoencoderKL`` and ``SpeechT5HifiGan``."""

    _optional_components: ClassVar[tuple[str, ...]] = ("feature_extractor",)

    feature_extractor: Any

    def __init__(
        self,
        vae: Any,
        text_encoder: Any,
        tokenizer: Any,
        feature_extractor: Any,
        unet: Any,
        scheduler: Any,
        vocoder: Any,
    ) -> None:
        super().__init__()
        self.register_modules(
            vae=vae,
            text_encoder=text_encoder,
            tokenizer=tokenizer,
            feature_extractor=feature_extractor,
            unet=unet,
            scheduler=scheduler,
            vocoder=vocoder,
        )

    def rank(self, prompt: Prompt | None, audio: torch.Tensor, per_prompt: int, dtype: torch.dtype) -> torch.Tensor:
        """The best ``num_waveforms_per_prompt`` per prompt by CLAP (:func:`~._common.rank_waveforms`)."""
        if prompt is None or self.feature_extractor is None or not hasattr(self.text_encoder, "audio_model"):
            return audio
        return rank_waveforms(
            self.text_encoder, self.tokenizer, self.feature_extractor, prompt, audio,
            per_prompt=per_prompt, sample_rate=self.sample_rate, device=self.device, dtype=dtype,
        )

    def __call__(
        self,
        prompt: Prompt | None = None,
        audio_length_in_s: float | None = None,
        num_inference_steps: int = 200,
        guidance_scale: float = 2.0,
        negative_prompt: Prompt | None = None,
        num_waveforms_per_prompt: int = 1,
        eta: float = 0.0,
        generator: Generator = None,
        latents: torch.Tensor | None = None,
        prompt_embeds: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
        return_dict: bool = True,
        callback: LegacyCallback | None = None,
        callback_steps: int | None = None,
        cross_attention_kwargs: dict[str, Any] | None = None,
        output_type: str = "np",
        callback_on_step_end: StepCallback | None = None,
        callback_on_step_end_tensor_inputs: Sequence[str] = ("latents",),
    ) -> Any:
        """Generate ``audio_length_in_s`` seconds (default: the UNet's ``sample_size``, 10.24 s published)
        of music per prompt; with ``num_waveforms_per_prompt > 1`` and a text prompt the clips are
        ranked by CLAP, best first (needs the ``[librosa]`` extra, else they keep their order).

        :returns: ``AudioPipelineOutput`` (``audios`` ``(batch, samples)``, ``sample_rate``) or ``(audios,)``.
        :raises ValueError | TypeError: on bad input, before any model runs.
        """
        return self.generate(locals())
