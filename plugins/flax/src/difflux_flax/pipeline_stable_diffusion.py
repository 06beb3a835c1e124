"""Stable Diffusion on JAX: text-to-image, image-to-image and inpainting (Rombach et al. 2022).

The three pipelines share one denoising step (:meth:`FlaxStableDiffusionPipeline._body`:
classifier-free guidance, Ho & Salimans 2022, then the scheduler's step) and differ only in how
the loop starts (:meth:`~FlaxStableDiffusionPipeline._start`). ``jit=False`` runs the step as a
compiled function in a Python loop (with a progress bar); ``jit=True`` compiles the whole
generation with :func:`jax.lax.fori_loop` and runs it on every local device with
:func:`jax.pmap` (params replicated, prompt ids sharded, one PRNG key per device)::

    pipe, params = FlaxStableDiffusionPipeline.from_pretrained(folder)
    ids = pipe.prepare_inputs(["a photo of a cat"] * jax.local_device_count())
    keys = jax.random.split(jax.random.key(0), jax.local_device_count())
    images = pipe(shard(ids), replicate(params), keys, 50, jit=True).images
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from .modeling import ParamsError, check_params
from .pipeline import FlaxDiffusionPipeline

__all__ = [
    "FlaxStableDiffusionImg2ImgPipeline",
    "FlaxStableDiffusionInpaintPipeline",
    "FlaxStableDiffusionPipeline",
    "FlaxStableDiffusionPipelineOutput",
]

Params = dict[str, Any]


@dataclasses.dataclass
class FlaxStableDiffusionPipelineOutput:
    """``images``: float32 numpy in [0, 1], ``(B, H, W, 3)`` (``jit=True``: ``(devices, B / devices, H, W, 3)``);
    ``nsfw_content_detected``: ``None`` (the safety checker has no Flax port)."""

    images: np.ndarray
    nsfw_content_detected: list[bool] | None = None


def _with_device_axis(spec: Any) -> Any:
    return jax.ShapeDtypeStruct((jax.local_device_count(), *spec.shape), spec.dtype)


def _is_key(value: Any) -> bool:
    return isinstance(value, jax.Array) and (
        jnp.issubdtype(value.dtype, jax.dtypes.prng_key) or (value.dtype == jnp.uint32 and value.shape[-1:] == (2,))
    )


def _key_batch_shape(value: jax.Array) -> tuple[int, ...]:
    return tuple(value.shape) if jnp.issubdtype(value.dtype, jax.dtypes.prng_key) else tuple(value.shape[:-1])


def _pixels(image: Any, size: tuple[int, int] | None, multiple: int) -> np.ndarray:
    """A PIL image (or list) as float32 NCHW in [-1, 1], resized (Lanczos) to ``size`` or down to a multiple."""
    import PIL.Image

    images = list(image) if isinstance(image, (list, tuple)) else [image]
    out = []
    for img in images:
        if not isinstance(img, PIL.Image.Image):
            raise TypeError(f"prepare_inputs: expected PIL images, got {type(img).__name__}")
        w, h = size[::-1] if size else (img.width - img.width % multiple, img.height - img.height % multiple)
        img = img.convert("RGB")
        if (img.width, img.height) != (w, h):
            img = img.resize((w, h), PIL.Image.Resampling.LANCZOS)
        out.append(np.asarray(img, np.float32).transpose(2, 0, 1) / 127.5 - 1.0)
    return np.stack(out)


class FlaxStableDiffusionPipeline(FlaxDiffusionPipeline):
    """Text-to-image Stable Diffusion 1.x / 2.x on JAX.

    Components (Diffusers names): ``vae`` (:class:`~difflux_flax.vae.FlaxAutoencoderKL`),
    ``text_encoder`` (:class:`~difflux_flax.clip.FlaxCLIPTextModel`), ``tokenizer`` (transformers'
    ``CLIPTokenizer``), ``unet`` (:class:`~difflux_flax.unet.FlaxUNet2DConditionModel`), ``scheduler`` (a
    Flax scheduler); ``safety_checker`` / ``feature_extractor`` / ``image_encoder`` are accepted and unused.
    """

    _model_components: tuple[str, ...] = ("text_encoder", "unet", "vae")

    vae: Any
    text_encoder: Any
    tokenizer: Any
    unet: Any
    scheduler: Any

    def __init__(
        self,
        vae: Any,
        text_encoder: Any,
        tokenizer: Any,
        unet: Any,
        scheduler: Any,
        safety_checker: Any = None,
        feature_extractor: Any = None,
        image_encoder: Any = None,
        dtype: Any = jnp.float32,
    ) -> None:
        super().__init__(
            vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler,
            safety_checker=safety_checker, feature_extractor=feature_extractor, image_encoder=image_encoder,
        )  # fmt: skip
        self.dtype = dtype
        self._compiled: dict[Any, Any] = {}
        self._shapes: dict[str, Any] = {}

    @property
    def vae_scale_factor(self) -> int:
        """Pixels per latent along each side: ``2 ** (len(vae.block_out_channels) - 1)``."""
        return int(2 ** (len(self.vae.block_out_channels) - 1))

    # -- inputs -------------------------------------------------------------------------------

    def prepare_inputs(self, prompt: str | Sequence[str]) -> np.ndarray:
        """Token ids ``(B, model_max_length)`` int32 of ``prompt``, padded / truncated as CLIP was trained.

        :raises TypeError: if ``prompt`` is not a string or a list of strings.
        """
        if isinstance(prompt, str):
            prompt = [prompt]
        if not isinstance(prompt, Sequence) or not all(isinstance(p, str) for p in prompt):
            raise TypeError(f"prepare_inputs: prompt must be a string or a list of strings, got {prompt!r:.80}")
        ids = self.tokenizer(
            list(prompt), padding="max_length", max_length=self.tokenizer.model_max_length, truncation=True,
            return_tensors="np",
        ).input_ids  # fmt: skip
        return np.asarray(ids, np.int32)

    def _check(
        self, prompt_ids: Any, params: Any, prng_seed: Any, steps: int, height: int, width: int, guidance: Any,
        latents: Any, neg_prompt_ids: Any, jit: bool,
    ) -> None:  # fmt: skip
        """Every argument checked before any model runs (clear errors naming the argument)."""
        name = type(self).__name__
        lead = 3 if jit else 2
        ids = np.asarray(prompt_ids) if not isinstance(prompt_ids, jax.Array) else prompt_ids
        if ids.ndim != lead or not np.issubdtype(ids.dtype, np.integer):
            shape = (
                "(devices, batch, seq) from shard(prepare_inputs(...))" if jit else "(batch, seq) from prepare_inputs"
            )
            raise ValueError(f"{name}: prompt_ids must be int token ids shaped {shape}, got {ids.dtype} {ids.shape}")
        max_len = int(self.text_encoder.max_position_embeddings)
        if ids.shape[-1] > max_len:
            raise ValueError(
                f"{name}: prompt_ids have {ids.shape[-1]} tokens; the text encoder takes at most {max_len}"
            )
        if jit and ids.shape[0] != jax.local_device_count():
            raise ValueError(
                f"{name}: jit=True needs prompt_ids sharded over the {jax.local_device_count()} local devices, "
                f"got a leading axis of {ids.shape[0]}; use shard(prompt_ids)"
            )
        if neg_prompt_ids is not None and np.shape(neg_prompt_ids) != ids.shape:
            raise ValueError(
                f"{name}: neg_prompt_ids {np.shape(neg_prompt_ids)} must be shaped like prompt_ids {ids.shape}"
            )
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise ValueError(f"{name}: num_inference_steps must be a positive int, got {steps!r}")
        f = self.vae_scale_factor
        for side, value in (("height", height), ("width", width)):
            if isinstance(value, bool) or not isinstance(value, int) or value < f or value % f:
                raise ValueError(f"{name}: {side} must be a positive multiple of {f}, got {value!r}")
        if not isinstance(guidance, (int, float)) and not isinstance(guidance, (jax.Array, np.ndarray)):
            raise ValueError(f"{name}: guidance_scale must be a number, got {guidance!r}")
        if not _is_key(prng_seed):
            raise ValueError(
                f"{name}: prng_seed must be a jax.random key (jax.random.key(0) / PRNGKey(0)), got {prng_seed!r:.60}"
            )
        keys = _key_batch_shape(prng_seed)
        if keys != ((jax.local_device_count(),) if jit else ()):
            hint = "one key per device: jax.random.split(key, jax.local_device_count())" if jit else "a single key"
            raise ValueError(f"{name}: prng_seed has batch shape {keys}; pass {hint}")
        self._check_params(params, jit)
        if latents is not None:
            want = (*ids.shape[:-1], self.unet.out_channels, height // f, width // f)
            if tuple(np.shape(latents)) != want or not jnp.issubdtype(jnp.asarray(latents).dtype, jnp.floating):
                raise ValueError(
                    f"{name}: latents must be floating and shaped {want}, got "
                    f"{getattr(latents, 'dtype', type(latents).__name__)} {tuple(np.shape(latents))}"
                )

    def _check_params(self, params: Any, jit: bool) -> None:
        name = type(self).__name__
        if not isinstance(params, dict):
            raise ParamsError(
                f"{name}: params must be the dict returned by from_pretrained, got {type(params).__name__}"
            )
        missing = [c for c in (*self._model_components, "scheduler") if c not in params]
        if missing:
            raise ParamsError(f"{name}: params has no entry for {missing}; pass the params from from_pretrained")
        for component in self._model_components:
            expected = self._shapes.get(component)
            if expected is None:
                expected = self._shapes[component] = getattr(self, component).params_shape()
            if jit:
                expected = jax.tree_util.tree_map(_with_device_axis, expected)
            where = f"{name}: params[{component!r}]" + (" (replicated for jit=True)" if jit else "")
            check_params(params[component], expected, where)

    # -- the generation steps (pure functions of params and arrays) -----------------------------

    def _encode(self, params: Params, prompt_ids: jax.Array, neg_ids: jax.Array) -> jax.Array:
        """Text embeddings ``(2B, S, D)``: the negative prompt's, then the prompt's."""
        ids = jnp.concatenate([neg_ids, prompt_ids], axis=0)
        out: jax.Array = self.text_encoder.apply({"params": params["text_encoder"]}, ids).last_hidden_state
        return out

    def _start(
        self, params: Params, state: Any, key: jax.Array, latents: jax.Array | None, inputs: dict[str, Any],
        batch: int, height: int, width: int,
    ) -> tuple[jax.Array, Any, int, jax.Array | None]:  # fmt: skip
        """``(latents, scheduler state, first step index, extra UNet input channels or None)``."""
        f = self.vae_scale_factor
        shape = (batch, self.unet.out_channels, height // f, width // f)
        if latents is None:
            latents = jax.random.normal(key, shape, jnp.float32)
        return latents.astype(jnp.float32) * state.init_noise_sigma, state, 0, None

    def _body(
        self, params: Params, context: jax.Array, guidance: jax.Array, extra: jax.Array | None, key: jax.Array,
        i: jax.Array, carry: tuple[jax.Array, Any],
    ) -> tuple[jax.Array, Any]:  # fmt: skip
        """One denoising step: the UNet on both halves, classifier-free guidance, the scheduler's step."""
        latents, state = carry
        t = state.timesteps[i]
        x = self.scheduler.scale_model_input(state, jnp.concatenate([latents, latents], axis=0), t)
        if extra is not None:
            x = jnp.concatenate([x, jnp.concatenate([extra, extra], axis=0).astype(x.dtype)], axis=1)
        timesteps = jnp.broadcast_to(t, (x.shape[0],))
        eps = self.unet.apply({"params": params["unet"]}, x, timesteps, context).sample.astype(jnp.float32)
        uncond, cond = jnp.split(eps, 2, axis=0)
        eps = uncond + guidance * (cond - uncond)
        out = self.scheduler.step(state, eps, t, latents, key=jax.random.fold_in(key, i))
        return out.prev_sample, out.state

    def _decode(self, params: Params, latents: jax.Array) -> jax.Array:
        """Images ``(B, H, W, 3)`` float32 in [0, 1] of the final latents."""
        scale = float(self.vae.scaling_factor)
        image = self.vae.apply({"params": params["vae"]}, latents / scale, method=self.vae.decode)
        return jnp.clip(image.astype(jnp.float32) / 2 + 0.5, 0, 1).transpose(0, 2, 3, 1)

    def _prepare(
        self, params: Params, prompt_ids: jax.Array, neg_ids: jax.Array, key: jax.Array, latents: Any,
        inputs: dict[str, Any], steps: int, height: int, width: int,
    ) -> tuple[jax.Array, jax.Array, Any, int, jax.Array | None, jax.Array]:  # fmt: skip
        context = self._encode(params, prompt_ids, neg_ids)
        f = self.vae_scale_factor
        shape = (prompt_ids.shape[0], self.unet.out_channels, height // f, width // f)
        state = self.scheduler.set_timesteps(params["scheduler"], steps, shape)
        k_start, k_steps = jax.random.split(key)
        latents, state, start, extra = self._start(
            params, state, k_start, latents, inputs, prompt_ids.shape[0], height, width
        )
        return context, latents, state, start, extra, k_steps

    def _generate(
        self, steps: int, height: int, width: int, params: Params, prompt_ids: jax.Array, neg_ids: jax.Array,
        key: jax.Array, latents: Any, guidance: jax.Array, inputs: dict[str, Any],
    ) -> jax.Array:  # fmt: skip
        """The whole generation as one traced function (``jit=True``): encode, ``fori_loop`` of steps, decode."""
        context, latents, state, start, extra, k_steps = self._prepare(
            params, prompt_ids, neg_ids, key, latents, inputs, steps, height, width
        )
        body = functools.partial(self._body, params, context, guidance, extra, k_steps)
        latents, _ = jax.lax.fori_loop(start, state.timesteps.shape[0], body, (latents, state))
        return self._decode(params, latents)

    # -- __call__ -------------------------------------------------------------------------------

    def __call__(
        self,
        prompt_ids: Any,
        params: Params,
        prng_seed: jax.Array,
        num_inference_steps: int = 50,
        height: int | None = None,
        width: int | None = None,
        guidance_scale: float | jax.Array = 7.5,
        latents: jax.Array | None = None,
        neg_prompt_ids: Any = None,
        return_dict: bool = True,
        jit: bool = False,
    ) -> FlaxStableDiffusionPipelineOutput | tuple[np.ndarray, None]:
        """Generate images for ``prompt_ids`` (from :meth:`prepare_inputs`).

        :param params: the tree from ``from_pretrained`` (``replicate(params)`` with ``jit=True``).
        :param prng_seed: a ``jax.random`` key (``jit=True``: one per device, ``jax.random.split(key, n)``).
        :param height, width: pixels, multiples of the VAE factor; default ``unet.sample_size * factor``.
        :param guidance_scale: classifier-free guidance weight (Ho & Salimans 2022); the unconditional
            half always runs.
        :param latents: initial noise ``(B, 4, H / 8, W / 8)`` (scaled by the scheduler's
            ``init_noise_sigma``), else drawn from ``prng_seed``.
        :param neg_prompt_ids: token ids of the negative prompt, shaped like ``prompt_ids`` (default: ``""``).
        :param jit: compile the whole generation and run it on every local device (``pmap``).
        :raises ValueError: on bad ids, sizes, keys, latents (before any model runs).
        :raises ParamsError: when ``params`` does not fit the models.
        """
        return self._run(
            prompt_ids, params, prng_seed, num_inference_steps, height, width, guidance_scale, latents,
            neg_prompt_ids, {}, return_dict, jit,
        )  # fmt: skip

    def _default_size(self, height: int | None, width: int | None, inputs: dict[str, Any]) -> tuple[int, int]:
        size = int(self._configs.get("unet", {}).get("sample_size") or 64) * self.vae_scale_factor
        return height or size, width or size

    def _run(
        self, prompt_ids: Any, params: Params, prng_seed: jax.Array, steps: int, height: int | None,
        width: int | None, guidance: Any, latents: Any, neg_prompt_ids: Any, inputs: dict[str, Any],
        return_dict: bool, jit: bool,
    ) -> FlaxStableDiffusionPipelineOutput | tuple[np.ndarray, None]:  # fmt: skip
        height, width = self._default_size(height, width, inputs)
        self._check(prompt_ids, params, prng_seed, steps, height, width, guidance, latents, neg_prompt_ids, jit)
        prompt_ids = jnp.asarray(prompt_ids)
        if neg_prompt_ids is None:
            flat = self.prepare_inputs([""])[:, : prompt_ids.shape[-1]]
            neg_prompt_ids = jnp.broadcast_to(jnp.asarray(flat[0]), prompt_ids.shape)
        neg_ids = jnp.asarray(neg_prompt_ids)
        if jit:
            images = self._run_pmap(steps, height, width, params, prompt_ids, neg_ids, prng_seed, latents, guidance,
                                    inputs)  # fmt: skip
        else:
            images = self._run_loop(steps, height, width, params, prompt_ids, neg_ids, prng_seed, latents, guidance,
                                    inputs)  # fmt: skip
        out = np.asarray(images)
        if not return_dict:
            return out, None
        return FlaxStableDiffusionPipelineOutput(images=out, nsfw_content_detected=None)

    def _compiled_fn(self, key: Any, build: Any) -> Any:
        fn = self._compiled.get(key)
        if fn is None:
            fn = self._compiled[key] = build()
        return fn

    def _run_loop(
        self, steps: int, height: int, width: int, params: Params, prompt_ids: jax.Array, neg_ids: jax.Array,
        key: jax.Array, latents: Any, guidance: Any, inputs: dict[str, Any],
    ) -> jax.Array:  # fmt: skip
        """``jit=False``: compiled prepare / step / decode, the steps in a Python loop with a progress bar."""
        prepare = self._compiled_fn(
            ("prepare", steps, height, width),
            lambda: jax.jit(functools.partial(self._prepare, steps=steps, height=height, width=width)),
        )
        context, latents, state, start, extra, k_steps = self._prepare_start(
            prepare, params, prompt_ids, neg_ids, key, latents, inputs, steps, height, width
        )
        body = self._compiled_fn("body", lambda: jax.jit(self._body))
        guidance_arr = jnp.asarray(guidance, jnp.float32)
        carry = (latents, state)
        for i in self.progress_bar(range(start, int(state.timesteps.shape[0]))):
            carry = body(params, context, guidance_arr, extra, k_steps, jnp.asarray(i, jnp.int32), carry)
        decode = self._compiled_fn("decode", lambda: jax.jit(self._decode))
        images: jax.Array = decode(params, carry[0])
        return images

    def _prepare_start(
        self, prepare: Any, params: Params, prompt_ids: jax.Array, neg_ids: jax.Array, key: jax.Array, latents: Any,
        inputs: dict[str, Any], steps: int, height: int, width: int,
    ) -> tuple[Any, ...]:  # fmt: skip
        # the first step index is a Python int (static): computed outside the compiled function
        start = self._start_index(steps, inputs)
        context, lat, state, _, extra, k_steps = prepare(params, prompt_ids, neg_ids, key, latents, inputs)
        return context, lat, state, start, extra, k_steps

    def _start_index(self, steps: int, inputs: dict[str, Any]) -> int:
        return 0

    def _run_pmap(
        self, steps: int, height: int, width: int, params: Params, prompt_ids: jax.Array, neg_ids: jax.Array,
        keys: jax.Array, latents: Any, guidance: Any, inputs: dict[str, Any],
    ) -> jax.Array:  # fmt: skip
        """``jit=True``: the whole generation, ``pmap``-ed over the local devices."""
        run = self._compiled_fn(
            ("pmap", steps, height, width),
            lambda: jax.pmap(functools.partial(self._generate, steps, height, width), in_axes=(0, 0, 0, 0, 0, None, 0)),
        )
        images: jax.Array = run(params, prompt_ids, neg_ids, keys, latents, jnp.asarray(guidance, jnp.float32), inputs)
        return images


class FlaxStableDiffusionImg2ImgPipeline(FlaxStableDiffusionPipeline):
    """Image-to-image: encode ``image``, noise it to ``strength``, denoise the rest of the schedule (SDEdit,
    Meng et al. 2022)."""

    def prepare_inputs(self, prompt: str | Sequence[str], image: Any = None) -> Any:  # type: ignore[override]
        """``(prompt_ids, pixels)``: token ids and the image(s) as float32 NCHW in [-1, 1] (each side cut down to a
        multiple of the VAE factor, Lanczos)."""
        ids = super().prepare_inputs(prompt)
        if image is None:
            return ids
        return ids, _pixels(image, None, self.vae_scale_factor)

    def __call__(  # type: ignore[override]
        self,
        prompt_ids: Any,
        image: Any,
        params: Params,
        prng_seed: jax.Array,
        strength: float = 0.8,
        num_inference_steps: int = 50,
        height: int | None = None,
        width: int | None = None,
        guidance_scale: float | jax.Array = 7.5,
        noise: jax.Array | None = None,
        neg_prompt_ids: Any = None,
        return_dict: bool = True,
        jit: bool = False,
    ) -> FlaxStableDiffusionPipelineOutput | tuple[np.ndarray, None]:
        """Denoise ``image`` from ``strength`` (0: unchanged, 1: from pure noise).

        :param image: ``(B, 3, H, W)`` pixels in [-1, 1] (from :meth:`prepare_inputs`), or latents
            ``(B, 4, H / 8, W / 8)`` that are used as they are (already scaled).
        :param noise: the noise added to the image latents (default: drawn from ``prng_seed``).
        :raises ValueError: for a ``strength`` outside [0, 1] that leaves no step, or a bad ``image``.
        """
        if isinstance(strength, bool) or not isinstance(strength, (int, float)) or not 0 < strength <= 1:
            raise ValueError(f"{type(self).__name__}: strength must be in (0, 1], got {strength!r}")
        image = jnp.asarray(image)
        lead = 2 if jit else 1
        ids_shape = np.shape(prompt_ids)
        f = self.vae_scale_factor
        latent_in = image.ndim == lead + 3 and image.shape[lead] == self.vae.latent_channels
        if image.ndim != lead + 3 or image.shape[:lead] != ids_shape[:lead] or image.shape[lead] not in (
            3, self.vae.latent_channels
        ):  # fmt: skip
            raise ValueError(
                f"{type(self).__name__}: image must be {'(devices, batch, ' if jit else '(batch, '}3, H, W) pixels or "
                f"latents with {self.vae.latent_channels} channels, batched like prompt_ids {ids_shape[:lead]}; "
                f"got {image.shape}"
            )
        side = f if latent_in else 1
        height = height or int(image.shape[-2]) * side
        width = width or int(image.shape[-1]) * side
        if (image.shape[-2] * side, image.shape[-1] * side) != (height, width):
            raise ValueError(f"{type(self).__name__}: image is {image.shape[-2:]}, not the requested {height}x{width}")
        if noise is not None and np.shape(noise) != (*ids_shape[:-1], self.unet.out_channels, height // f, width // f):
            raise ValueError(f"{type(self).__name__}: noise {np.shape(noise)} must be shaped like the latents")
        inputs = {"image": image, "noise": noise}
        if not self._steps_left(num_inference_steps, strength):
            raise ValueError(
                f"{type(self).__name__}: strength={strength} with {num_inference_steps} steps leaves no denoising step"
            )
        self._strength = float(strength)
        return self._run(
            prompt_ids, params, prng_seed, num_inference_steps, height, width, guidance_scale, None, neg_prompt_ids,
            inputs, return_dict, jit,
        )  # fmt: skip

    @staticmethod
    def _steps_left(steps: int, strength: float) -> int:
        return min(int(steps * strength), steps) if isinstance(steps, int) else 1

    def _start_index(self, steps: int, inputs: dict[str, Any]) -> int:
        return steps - self._steps_left(steps, self._strength)

    def _start(
        self, params: Params, state: Any, key: jax.Array, latents: jax.Array | None, inputs: dict[str, Any],
        batch: int, height: int, width: int,
    ) -> tuple[jax.Array, Any, int, jax.Array | None]:  # fmt: skip
        k_encode, k_noise = jax.random.split(key)
        image = inputs["image"]
        if image.shape[1] == self.vae.latent_channels:
            init = image.astype(jnp.float32)
        else:
            dist = self.vae.apply({"params": params["vae"]}, image, method=self.vae.encode)
            init = dist.sample(k_encode).astype(jnp.float32) * float(self.vae.scaling_factor)
        noise = inputs.get("noise")
        if noise is None:
            noise = jax.random.normal(k_noise, init.shape, jnp.float32)
        steps = int(state.num_inference_steps)
        start = steps - self._steps_left(steps, self._strength)
        state = self.scheduler.set_begin_index(state, start)
        t = jnp.broadcast_to(state.timesteps[start], (init.shape[0],))
        return self.scheduler.add_noise(state, init, noise.astype(jnp.float32), t), state, start, None

    def _compiled_fn(self, key: Any, build: Any) -> Any:
        # the first step index (from strength) is static in the compiled functions: part of their key
        return super()._compiled_fn((key, self._strength), build)


class FlaxStableDiffusionInpaintPipeline(FlaxStableDiffusionPipeline):
    """Inpainting with a 9-channel UNet: it sees the latents, the mask and the masked image's latents at every step."""

    def prepare_inputs(  # type: ignore[override]
        self, prompt: str | Sequence[str], image: Any = None, mask: Any = None
    ) -> Any:
        """``(prompt_ids, masked_image, mask)``: token ids; ``image * (mask < 0.5)`` as float32 NCHW in [-1, 1];
        the mask ``(B, 1, H, W)`` float32 binarised at 0.5 (1: repaint)."""
        import PIL.Image

        ids = super().prepare_inputs(prompt)
        if image is None or mask is None:
            return ids
        pixels = _pixels(image, None, self.vae_scale_factor)
        masks = list(mask) if isinstance(mask, (list, tuple)) else [mask]
        size = pixels.shape[-2:]
        arrays = []
        for m in masks:
            m = m.convert("L")
            if (m.height, m.width) != tuple(size):
                m = m.resize((size[1], size[0]), PIL.Image.Resampling.LANCZOS)
            arrays.append((np.asarray(m, np.float32) / 255.0 >= 0.5).astype(np.float32)[None])
        mask_arr = np.stack(arrays)
        return ids, pixels * (mask_arr < 0.5), mask_arr

    def __call__(  # type: ignore[override]
        self,
        prompt_ids: Any,
        mask: Any,
        masked_image: Any,
        params: Params,
        prng_seed: jax.Array,
        num_inference_steps: int = 50,
        height: int | None = None,
        width: int | None = None,
        guidance_scale: float | jax.Array = 7.5,
        latents: jax.Array | None = None,
        neg_prompt_ids: Any = None,
        return_dict: bool = True,
        jit: bool = False,
    ) -> FlaxStableDiffusionPipelineOutput | tuple[np.ndarray, None]:
        """Repaint where ``mask`` is 1.

        :param mask: ``(B, 1, H, W)`` in {0, 1} (pixels; reduced to the latent grid by nearest sampling).
        :param masked_image: ``(B, 3, H, W)`` pixels in [-1, 1] with the masked region zeroed, or its
            latents ``(B, 4, H / 8, W / 8)`` (used as they are).
        :raises ValueError: for a UNet without 9 input channels or inputs of the wrong shape.
        """
        name = type(self).__name__
        latent_ch = self.vae.latent_channels
        if self.unet.in_channels != 2 * latent_ch + 1:
            raise ValueError(
                f"{name}: the UNet takes {self.unet.in_channels} input channels; the Flax inpainting pipeline needs "
                f"an inpainting UNet ({2 * latent_ch + 1}: latents + mask + masked image latents)"
            )
        lead = 2 if jit else 1
        mask, masked_image = jnp.asarray(mask, jnp.float32), jnp.asarray(masked_image)
        if mask.ndim != lead + 3 or mask.shape[lead] != 1:
            raise ValueError(
                f"{name}: mask must be {'(devices, batch, ' if jit else '(batch, '}1, H, W), got {mask.shape}"
            )
        height = height or int(mask.shape[-2])
        width = width or int(mask.shape[-1])
        f = self.vae_scale_factor
        if tuple(mask.shape[-2:]) != (height, width):
            raise ValueError(f"{name}: mask is {mask.shape[-2:]}, not the requested {height}x{width}")
        want = {3: (height, width), latent_ch: (height // f, width // f)}
        if masked_image.ndim != lead + 3 or want.get(int(masked_image.shape[lead])) != tuple(masked_image.shape[-2:]):
            raise ValueError(
                f"{name}: masked_image must be pixels (3, {height}, {width}) or latents ({latent_ch}, {height // f}, "
                f"{width // f}) per sample, got {masked_image.shape}"
            )
        inputs = {"mask": mask, "masked_image": masked_image}
        return self._run(
            prompt_ids, params, prng_seed, num_inference_steps, height, width, guidance_scale, latents, neg_prompt_ids,
            inputs, return_dict, jit,
        )  # fmt: skip

    def _start(
        self, params: Params, state: Any, key: jax.Array, latents: jax.Array | None, inputs: dict[str, Any],
        batch: int, height: int, width: int,
    ) -> tuple[jax.Array, Any, int, jax.Array | None]:  # fmt: skip
        k_latents, k_encode = jax.random.split(key)
        latents, state, start, _ = super()._start(params, state, k_latents, latents, inputs, batch, height, width)
        f = self.vae_scale_factor
        mask = inputs["mask"][:, :, ::f, ::f]  # nearest: the pixel at the top-left of each latent cell
        masked = inputs["masked_image"]
        if masked.shape[1] != self.vae.latent_channels:
            dist = self.vae.apply({"params": params["vae"]}, masked, method=self.vae.encode)
            masked = dist.sample(k_encode) * float(self.vae.scaling_factor)
        extra = jnp.concatenate([mask, masked.astype(jnp.float32)], axis=1)
        return latents, state, start, extra
