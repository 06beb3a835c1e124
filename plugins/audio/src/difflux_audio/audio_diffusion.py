"""Audio Diffusion: diffusion on mel-spectrogram images (Robert Dargavel Smith's audio-diffusion), and
its ``Mel`` component that turns audio into 8-bit spectrogram images and back (Griffin-Lim).

``Mel`` needs ``librosa`` (the ``[librosa]`` extra of difflux-audio).
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np
import PIL.Image
import torch
from difflux.config import ConfigMixin
from difflux.outputs import BaseOutput
from difflux.pipeline import DiffusionPipeline
from difflux.pipeline_utils import DenoisingState, StepCallback, step_callback
from difflux.torch_utils import randn_tensor

from .extras import require

__all__ = ["AudioDiffusionOutput", "AudioDiffusionPipeline", "Mel"]


class Mel(ConfigMixin):
    """Audio ↔ mel-spectrogram image: ``x_res`` frames (time) by ``y_res`` mel bins, 8-bit grey.

    :param x_res: frames per image (a slice is ``x_res * hop_length - 1`` samples).
    :param y_res: mel bins (image height).
    :param sample_rate: Hz.
    :param n_fft: / ``hop_length``: STFT window and hop, in samples.
    :param top_db: dynamic range kept, in dB (mapped to 0..255).
    :param n_iter: Griffin-Lim iterations when turning an image back into audio.
    :raises difflux_audio.extras.MissingExtraError: when librosa is not installed.
    """

    config_name: ClassVar[str] = "mel_config.json"

    def __init__(
        self,
        x_res: int = 256,
        y_res: int = 256,
        sample_rate: int = 22050,
        n_fft: int = 2048,
        hop_length: int = 512,
        top_db: int = 80,
        n_iter: int = 32,
    ) -> None:
        self._librosa = require("librosa", "Mel (Audio Diffusion's spectrogram converter)")
        self.hop_length = hop_length
        self.sr = sample_rate
        self.n_fft = n_fft
        self.top_db = top_db
        self.n_iter = n_iter
        self.audio: np.ndarray | None = None
        self.set_resolution(x_res, y_res)

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike[str], subfolder: str | None = None, **_options: Any) -> Mel:
        """Read ``mel_config.json`` from ``path`` (load options such as ``torch_dtype`` do not apply)."""
        return cls.from_config(cls.load_config(path, subfolder))

    def save_pretrained(self, save_directory: str | os.PathLike[str], **_options: Any) -> Any:
        """Write ``mel_config.json`` into ``save_directory``."""
        return self.save_config(save_directory)

    def set_resolution(self, x_res: int, y_res: int) -> None:
        """Set the image size: ``x_res`` frames by ``y_res`` mel bins."""
        self.x_res, self.y_res = x_res, y_res
        self.n_mels = y_res
        self.slice_size = x_res * self.hop_length - 1

    def load_audio(self, audio_file: str | None = None, raw_audio: np.ndarray | None = None) -> None:
        """Load a file (resampled to ``sample_rate``, mono) or take ``raw_audio``; pad to one image."""
        if audio_file is not None:
            self.audio, _ = self._librosa.load(audio_file, mono=True, sr=self.sr)
        elif raw_audio is not None:
            self.audio = np.asarray(raw_audio)
        else:
            raise ValueError("Mel.load_audio: pass audio_file or raw_audio")
        need = self.x_res * self.hop_length
        if len(self.audio) < need:
            self.audio = np.concatenate([self.audio, np.zeros((need - len(self.audio),))])

    def _loaded(self) -> np.ndarray:
        if self.audio is None:
            raise ValueError("Mel: no audio loaded; call load_audio first")
        return self.audio

    def get_number_of_slices(self) -> int:
        """How many whole images the loaded audio fills."""
        return len(self._loaded()) // self.slice_size

    def get_audio_slice(self, slice: int = 0) -> np.ndarray:
        """Samples of image ``slice`` of the loaded audio."""
        return self._loaded()[self.slice_size * slice : self.slice_size * (slice + 1)]

    def get_sample_rate(self) -> int:
        """The sample rate in Hz."""
        return self.sr

    def audio_slice_to_image(self, slice: int) -> PIL.Image.Image:
        """Image ``slice`` of the loaded audio: the power mel spectrogram in dB (``top_db`` below the peak
        is 0, the peak 255), ``y_res`` x ``x_res`` grey."""
        lib = self._librosa
        power = lib.feature.melspectrogram(
            y=self.get_audio_slice(slice), sr=self.sr, n_fft=self.n_fft, hop_length=self.hop_length, n_mels=self.n_mels
        )
        db = lib.power_to_db(power, ref=np.max, top_db=self.top_db)
        grey = (((db + self.top_db) * 255 / self.top_db).clip(0, 255) + 0.5).astype(np.uint8)
        return PIL.Image.fromarray(grey)

    def image_to_audio(self, image: PIL.Image.Image) -> np.ndarray:
        """Audio of a spectrogram image: undo the dB scaling, invert the mel filter bank and recover the
        phase with Griffin-Lim (``n_iter`` iterations; its random start makes each call differ)."""
        lib = self._librosa
        grey = np.frombuffer(image.tobytes(), dtype="uint8").reshape((image.height, image.width))
        power = lib.db_to_power(grey.astype("float") * self.top_db / 255 - self.top_db)
        audio: np.ndarray = lib.feature.inverse.mel_to_audio(
            power, sr=self.sr, n_fft=self.n_fft, hop_length=self.hop_length, n_iter=self.n_iter
        )
        return audio


@dataclasses.dataclass
class AudioDiffusionOutput(BaseOutput):
    """``audios`` ``(batch, 1, samples)`` float, ``images`` (grey PIL spectrograms), and ``sample_rate``
    (Hz; an attribute outside the tuple view)."""

    audios: np.ndarray
    images: list[PIL.Image.Image]
    sample_rate: int | None = dataclasses.field(default=None, metadata={"view": False})


Generator = torch.Generator | Sequence[torch.Generator] | None


class AudioDiffusionPipeline(DenoisingState, DiffusionPipeline):
    """Generate mel-spectrogram images with a ``UNet2DModel`` (or a ``UNet2DConditionModel`` given an
    ``encoding``), optionally in a VAE's latent space (``vqvae``), and turn them into audio with
    :class:`Mel`. From an input clip it makes variations (``start_step``) and in/outpaints
    (``mask_start_secs`` / ``mask_end_secs`` keep the clip's start / end).
    """

    _optional_components: ClassVar[tuple[str, ...]] = ("vqvae",)
    model_cpu_offload_seq = "vqvae->unet"
    _callback_tensor_inputs = ("latents",)
    #: what ``difflux generate`` writes for this pipeline (a ``.wav``)
    output_kind: ClassVar[str] = "audio"

    vqvae: Any
    unet: Any
    mel: Mel
    scheduler: Any

    def __init__(self, vqvae: Any, unet: Any, mel: Mel, scheduler: Any) -> None:
        super().__init__()
        self.register_modules(unet=unet, scheduler=scheduler, mel=mel, vqvae=vqvae)

    @property
    def sample_rate(self) -> int:
        """The audio's sample rate in Hz (the ``Mel``'s)."""
        return self.mel.get_sample_rate()

    def _is_ddim(self) -> bool:
        return type(self.scheduler).__name__ == "DDIMScheduler"

    def get_default_steps(self) -> int:
        """50 steps with DDIM, 1000 with DDPM."""
        return 50 if self._is_ddim() else 1000

    def _size(self) -> tuple[int, int]:
        size = self.unet.config.sample_size
        return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))

    def _check(self, batch_size: int, steps: int, start_step: int, audio: bool, noise: Any, encoding: Any) -> None:
        name = type(self).__name__
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"{name}: batch_size must be a positive int, got {batch_size!r}")
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise ValueError(f"{name}: steps must be a positive int, got {steps!r}")
        if isinstance(start_step, bool) or not isinstance(start_step, int) or not 0 <= start_step < steps:
            raise ValueError(f"{name}: start_step must be an int in [0, steps={steps}), got {start_step!r}")
        if start_step > 0 and not audio:
            raise ValueError(f"{name}: start_step needs an input clip (audio_file= or raw_audio=)")
        if noise is not None and not isinstance(noise, torch.Tensor):
            raise TypeError(f"{name}: noise must be a torch.Tensor, got {type(noise).__name__}")
        conditional = type(self.unet).__name__ == "UNet2DConditionModel"
        if conditional and encoding is None:
            raise ValueError(f"{name}: this UNet is conditional (UNet2DConditionModel): pass encoding=")

    def _input_latents(self, slice: int, generator: Generator) -> torch.Tensor:
        """The loaded clip's spectrogram image ``slice`` in ``[-1, 1]`` (encoded by ``vqvae`` when there is one)."""
        image = self.mel.audio_slice_to_image(slice)
        grey = np.frombuffer(image.tobytes(), dtype="uint8").reshape((image.height, image.width))
        pixels = torch.tensor(((grey / 255) * 2 - 1)[np.newaxis], dtype=torch.float).to(self.device)
        if self.vqvae is None:
            return pixels
        latents = self.vqvae.encode(pixels[None]).latent_dist.sample(generator=generator)[0]
        scaled: torch.Tensor = self.vqvae.config.scaling_factor * latents
        return scaled

    def _step(self, output: torch.Tensor, t: torch.Tensor, images: torch.Tensor, eta: float, gen: Any) -> Any:
        if self._is_ddim():
            return self.scheduler.step(output, t, images, eta=eta, generator=gen).prev_sample
        return self.scheduler.step(output, t, images, generator=gen).prev_sample

    def __call__(
        self,
        batch_size: int = 1,
        audio_file: str | None = None,
        raw_audio: np.ndarray | None = None,
        slice: int = 0,
        start_step: int = 0,
        steps: int | None = None,
        generator: torch.Generator | None = None,
        mask_start_secs: float = 0,
        mask_end_secs: float = 0,
        step_generator: torch.Generator | None = None,
        eta: float = 0,
        noise: torch.Tensor | None = None,
        encoding: torch.Tensor | None = None,
        return_dict: bool = True,
        callback_on_step_end: StepCallback | None = None,
        callback_on_step_end_tensor_inputs: Sequence[str] = ("latents",),
    ) -> Any:
        """Generate ``batch_size`` spectrograms and their audio.

        :param audio_file: / ``raw_audio``: an input clip (mono samples at the Mel's rate); its image
            ``slice`` is the start (noised to ``start_step``) and the source of the masked edges.
        :param steps: denoising steps (default 50 with DDIM, 1000 with DDPM).
        :param noise: starting noise ``(batch, in_channels, h, w)``; ``encoding`` the conditional UNet's
            ``encoder_hidden_states``.
        :returns: :class:`AudioDiffusionOutput` (``audios`` ``(batch, 1, samples)``, ``images``,
            ``sample_rate``), or ``(images, (sample_rate, audios))``.
        :raises ValueError | TypeError: on bad input, before any model runs.
        """
        steps = steps or self.get_default_steps()
        has_audio = audio_file is not None or raw_audio is not None
        self._check(batch_size, steps, start_step, has_audio, noise, encoding)
        self._interrupt = False
        self.scheduler.set_timesteps(steps)
        step_generator = step_generator or generator
        height, width = self._size()
        if noise is None:
            noise = randn_tensor(
                (batch_size, self.unet.config.in_channels, height, width), generator=generator, device=self.device
            )
        images = noise
        mask = None
        timesteps = self.scheduler.timesteps[start_step:]
        if has_audio:
            self.mel.load_audio(audio_file, raw_audio)
            start = self._input_latents(slice, generator)
            if start_step > 0:
                images[0, 0] = self.scheduler.add_noise(start, noise, self.scheduler.timesteps[start_step - 1])
            per_second = width * self.mel.get_sample_rate() / self.mel.x_res / self.mel.hop_length
            mask_start, mask_end = int(mask_start_secs * per_second), int(mask_end_secs * per_second)
            mask = self.scheduler.add_noise(start, noise, timesteps.clone())
        conditional = type(self.unet).__name__ == "UNet2DConditionModel"
        self._num_timesteps = len(timesteps)
        for i, t in enumerate(self.progress_bar(timesteps)):
            if self._interrupt:
                break
            output = self.unet(images, t, encoding).sample if conditional else self.unet(images, t).sample
            images = self._step(output, t, images, eta, step_generator)
            if mask is not None:
                if mask_start > 0:
                    images[:, :, :, :mask_start] = mask[:, i, :, :mask_start]
                if mask_end > 0:
                    images[:, :, :, -mask_end:] = mask[:, i, :, -mask_end:]
            if callback_on_step_end is not None:
                images = step_callback(
                    self, callback_on_step_end, i, t, {"latents": images}, callback_on_step_end_tensor_inputs
                )["latents"]
        pictures = self._to_images(images)
        audios = np.array([self.mel.image_to_audio(p) for p in pictures])[:, np.newaxis, :]
        self.maybe_free_model_hooks()
        if not return_dict:
            return pictures, (self.mel.get_sample_rate(), list(audios[:, 0]))
        return AudioDiffusionOutput(audios=audios, images=pictures, sample_rate=self.mel.get_sample_rate())

    def _to_images(self, images: torch.Tensor) -> list[PIL.Image.Image]:
        """Denoised samples (decoded by ``vqvae`` when there is one) as 8-bit grey images."""
        if self.vqvae is not None:
            images = self.vqvae.decode(images / self.vqvae.config.scaling_factor).sample
        array = ((images / 2 + 0.5).clamp(0, 1).cpu().permute(0, 2, 3, 1).numpy() * 255).round().astype("uint8")
        if array.shape[3] == 1:
            return [PIL.Image.fromarray(a[:, :, 0]) for a in array]
        return [PIL.Image.fromarray(a, mode="RGB").convert("L") for a in array]

    @torch.no_grad()
    def encode(self, images: list[PIL.Image.Image], steps: int = 50) -> torch.Tensor:
        """Run DDIM backwards from spectrogram ``images`` to the noise ``(batch, 1, h, w)`` that makes them.

        :raises ValueError: unless the scheduler is a ``DDIMScheduler``.
        """
        if not self._is_ddim():
            raise ValueError(f"{type(self).__name__}.encode needs a DDIMScheduler, not {type(self.scheduler).__name__}")
        sched = self.scheduler
        sched.set_timesteps(steps)
        grey = np.array([np.frombuffer(i.tobytes(), dtype="uint8").reshape((1, i.height, i.width)) for i in images])
        sample = torch.Tensor((grey / 255) * 2 - 1).to(self.device)
        stride = sched.config.num_train_timesteps // sched.num_inference_steps
        for t in self.progress_bar(torch.flip(sched.timesteps, (0,))):
            prev = t - stride
            alpha = sched.alphas_cumprod[t]
            alpha_prev = sched.alphas_cumprod[prev] if prev >= 0 else sched.final_alpha_cumprod
            out = self.unet(sample, t).sample
            sample = (sample - (1 - alpha_prev) ** 0.5 * out) * alpha_prev ** (-0.5)
            sample = sample * alpha**0.5 + (1 - alpha) ** 0.5 * out
        return sample

    @staticmethod
    def slerp(x0: torch.Tensor, x1: torch.Tensor, alpha: float) -> torch.Tensor:
        """Spherical linear interpolation between two noise tensors (Shoemake 1985)."""
        theta = math.acos(float(torch.dot(x0.flatten(), x1.flatten()) / torch.norm(x0) / torch.norm(x1)))
        return math.sin((1 - alpha) * theta) * x0 / math.sin(theta) + math.sin(alpha * theta) * x1 / math.sin(theta)
