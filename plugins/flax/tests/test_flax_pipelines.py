"""Flax Stable Diffusion pipelines against difflux's PyTorch pipelines on the same folder and initial latents."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from difflux_flax import (
    FlaxDDIMScheduler,
    FlaxDiffusionPipeline,
    FlaxStableDiffusionImg2ImgPipeline,
    FlaxStableDiffusionInpaintPipeline,
    FlaxStableDiffusionPipeline,
    ParamsError,
)

PROMPT = "a cat"


def _latents(seed: int, batch: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((batch, 4, 16, 16)).astype(np.float32)


@pytest.fixture(scope="module")
def flax_sd(sd_folder: Path) -> tuple[Any, Any]:
    pipe, params = FlaxDiffusionPipeline.from_pretrained(sd_folder)
    pipe.set_progress_bar_config(disable=True)
    return pipe, params


def test_from_pretrained_resolves_flax_classes_through_the_registry(flax_sd: tuple[Any, Any]) -> None:
    pipe, params = flax_sd
    assert type(pipe) is FlaxStableDiffusionPipeline
    assert type(pipe.unet).__name__ == "FlaxUNet2DConditionModel"
    assert type(pipe.vae).__name__ == "FlaxAutoencoderKL"
    assert type(pipe.text_encoder).__name__ == "FlaxCLIPTextModel"
    assert type(pipe.scheduler).__name__ == "FlaxPNDMScheduler"
    assert sorted(params) == ["scheduler", "text_encoder", "unet", "vae"]
    assert pipe.safety_checker is None


def test_text_to_image_matches_pytorch(flax_sd: tuple[Any, Any], torch_sd: Any) -> None:
    pipe, params = flax_sd
    lat = _latents(0)
    ref = torch_sd(PROMPT, num_inference_steps=2, height=32, width=32, latents=torch.from_numpy(lat),
                   output_type="np").images  # fmt: skip
    got = pipe(pipe.prepare_inputs([PROMPT]), params, jax.random.key(0), 2, 32, 32, latents=jnp.asarray(lat)).images
    assert got.shape == ref.shape == (1, 32, 32, 3)
    assert float(np.abs(got - ref).max()) <= 1e-3


@pytest.mark.slow  # compiles a pipeline of its own (~10-25 s of CPU); --run-slow runs it
def test_image_to_image_matches_pytorch(sd_folder: Path, torch_sd: Any) -> None:
    """Image latents passed through (no VAE sampling), the same noise on both sides: strength 0.5 of 4 steps."""
    pipe, params = FlaxStableDiffusionImg2ImgPipeline.from_pretrained(
        sd_folder, scheduler=FlaxDDIMScheduler.from_config(dict(torch_sd.scheduler.config))
    )
    pipe.set_progress_bar_config(disable=True)
    from difflux_schedulers import DDIMScheduler
    from difflux_stable_diffusion import StableDiffusionImg2ImgPipeline

    ddim = DDIMScheduler.from_config(torch_sd.scheduler.config)
    torch_pipe = StableDiffusionImg2ImgPipeline(**{**torch_sd.components, "scheduler": ddim})
    torch_pipe.set_progress_bar_config(disable=True)
    image_latents = _latents(1)
    noise = torch.randn((1, 4, 16, 16), generator=torch.Generator().manual_seed(3))
    ref = torch_pipe(PROMPT, image=torch.from_numpy(image_latents), strength=0.5, num_inference_steps=4,
                     generator=torch.Generator().manual_seed(3), output_type="np").images  # fmt: skip
    ids = pipe.prepare_inputs([PROMPT])
    got = pipe(ids, jnp.asarray(image_latents), params, jax.random.key(0), strength=0.5, num_inference_steps=4,
               noise=jnp.asarray(noise.numpy())).images  # fmt: skip
    assert float(np.abs(got - ref).max()) <= 1e-3


@pytest.mark.slow  # compiles a pipeline of its own (~10-25 s of CPU); --run-slow runs it
def test_inpaint_matches_pytorch(inpaint_folder: Path) -> None:
    from difflux_stable_diffusion.testing import image_input, load_difflux, mask_input

    torch_pipe = load_difflux(inpaint_folder)
    pipe, params = FlaxStableDiffusionInpaintPipeline.from_pretrained(inpaint_folder)
    pipe.set_progress_bar_config(disable=True)
    ids, masked_pixels, mask = pipe.prepare_inputs([PROMPT], image_input(0), mask_input())
    masked_latents = _latents(5) * 0.5
    lat = _latents(6)
    ref = torch_pipe(PROMPT, image=image_input(0), mask_image=mask_input(), masked_image_latents=torch.from_numpy(
        masked_latents), latents=torch.from_numpy(lat), num_inference_steps=2, output_type="np").images  # fmt: skip
    got = pipe(ids, mask, jnp.asarray(masked_latents), params, jax.random.key(0), 2, latents=jnp.asarray(lat)).images
    assert float(np.abs(got - ref).max()) <= 1e-3
    assert masked_pixels.shape == (1, 3, 32, 32) and mask.shape == (1, 1, 32, 32)
    assert set(np.unique(mask)) <= {0.0, 1.0}


def test_save_pretrained_writes_the_diffusers_layout(flax_sd: tuple[Any, Any], tmp_path: Path, torch_sd: Any) -> None:
    pipe, params = flax_sd
    out = pipe.save_pretrained(tmp_path / "saved", params)
    index = json.loads((out / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionPipeline"
    assert index["unet"] == ["diffusers", "UNet2DConditionModel"]
    assert index["text_encoder"] == ["transformers", "CLIPTextModel"]
    assert index["scheduler"] == ["diffusers", "PNDMScheduler"]
    from difflux_stable_diffusion.testing import load_difflux

    again = load_difflux(out)
    for name in ("unet", "vae", "text_encoder"):
        ref, got = getattr(torch_sd, name).state_dict(), getattr(again, name).state_dict()
        assert ref.keys() == got.keys()
        for key in ref:
            torch.testing.assert_close(got[key], ref[key], atol=0, rtol=0)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".saved")]


def test_progress_bar_switch(flax_sd: tuple[Any, Any]) -> None:
    pipe, _ = flax_sd
    pipe.set_progress_bar_config(disable=False, desc="flax")
    bar = pipe.progress_bar(range(3))
    assert bar.desc == "flax" and not bar.disable
    bar.close()
    pipe.set_progress_bar_config(disable=True)
    assert pipe.progress_bar(total=2).disable
    images = pipe.numpy_to_pil(np.zeros((2, 4, 4, 3), np.float32))
    assert [im.size for im in images] == [(4, 4), (4, 4)]


# -- bad input: clear errors before any model runs --------------------------------------------------


def test_wrong_prompt_ids_shape(flax_sd: tuple[Any, Any]) -> None:
    pipe, params = flax_sd
    ids = pipe.prepare_inputs([PROMPT])
    with pytest.raises(ValueError, match="prompt_ids must be int token ids shaped"):
        pipe(ids[0], params, jax.random.key(0), 2, 32, 32)
    with pytest.raises(ValueError, match="prompt_ids must be int"):
        pipe(ids.astype(np.float32), params, jax.random.key(0), 2, 32, 32)
    with pytest.raises(ValueError, match="takes at most 77"):
        pipe(np.zeros((1, 100), np.int32), params, jax.random.key(0), 2, 32, 32)
    with pytest.raises(ValueError, match="sharded over the 1 local devices"):
        pipe(np.stack([ids, ids]), params, jax.random.key(0), 2, 32, 32, jit=True)
    with pytest.raises(ValueError, match="neg_prompt_ids"):
        pipe(ids, params, jax.random.key(0), 2, 32, 32, neg_prompt_ids=ids[:, :10])


def test_mismatched_params_tree(flax_sd: tuple[Any, Any]) -> None:
    pipe, params = flax_sd
    ids = pipe.prepare_inputs([PROMPT])
    with pytest.raises(ParamsError, match="no entry for"):
        pipe(ids, {k: v for k, v in params.items() if k != "vae"}, jax.random.key(0), 2, 32, 32)
    broken = {**params, "unet": {**params["unet"], "conv_in": {"kernel": params["unet"]["conv_in"]["kernel"]}}}
    with pytest.raises(ParamsError, match=r"missing.*conv_in"):
        pipe(ids, broken, jax.random.key(0), 2, 32, 32)
    swapped = {**params, "unet": params["vae"]}
    with pytest.raises(ParamsError, match=r"params\['unet'\]"):
        pipe(ids, swapped, jax.random.key(0), 2, 32, 32)
    with pytest.raises(ParamsError, match="replicated for jit=True"):
        pipe(ids[None], params, jax.random.split(jax.random.key(0), 1), 2, 32, 32, jit=True)


def test_wrong_dtypes(flax_sd: tuple[Any, Any], sd_folder: Path) -> None:
    pipe, params = flax_sd
    ids = pipe.prepare_inputs([PROMPT])
    with pytest.raises(TypeError, match="not a floating dtype"):
        FlaxDiffusionPipeline.from_pretrained(sd_folder, dtype=jnp.int8)
    as_int = {**params, "vae": jax.tree_util.tree_map(lambda a: a.astype(jnp.int32), params["vae"])}
    with pytest.raises(ParamsError, match="must be floating"):
        pipe(ids, as_int, jax.random.key(0), 2, 32, 32)
    with pytest.raises(ValueError, match="latents must be floating"):
        pipe(ids, params, jax.random.key(0), 2, 32, 32, latents=jnp.zeros((1, 4, 16, 16), jnp.int32))
    with pytest.raises(ValueError, match=r"prng_seed must be a jax\.random key"):
        pipe(ids, params, 0, 2, 32, 32)
    with pytest.raises(ValueError, match="height must be a positive multiple of 2"):
        pipe(ids, params, jax.random.key(0), 2, 33, 32)


def test_inpaint_needs_an_inpainting_unet(flax_sd: tuple[Any, Any], sd_folder: Path) -> None:
    pipe, params = FlaxStableDiffusionInpaintPipeline.from_pretrained(sd_folder)
    ids = pipe.prepare_inputs([PROMPT])
    with pytest.raises(ValueError, match="needs an inpainting UNet"):
        pipe(ids, np.zeros((1, 1, 32, 32)), np.zeros((1, 3, 32, 32)), params, jax.random.key(0), 2)


# -- several devices ------------------------------------------------------------------------------

MULTI_DEVICE = textwrap.dedent(
    """
    import json, sys
    import jax, jax.numpy as jnp, numpy as np
    from difflux_flax import FlaxDiffusionPipeline, replicate, shard
    assert jax.local_device_count() == 4, jax.devices()
    pipe, params = FlaxDiffusionPipeline.from_pretrained(sys.argv[1])
    pipe.set_progress_bar_config(disable=True)
    ids = pipe.prepare_inputs(["a cat", "a dog", "a red cat", "a blue dog"])
    keys = jax.random.split(jax.random.key(0), 4)
    images = pipe(shard(ids), replicate(params), keys, 2, 32, 32, jit=True).images
    single = [pipe(ids[i:i + 1], params, keys[i], 2, 32, 32).images[0] for i in range(4)]
    diffs = [float(np.abs(images[i, 0] - single[i]).max()) for i in range(4)]
    spread = float(np.abs(images[0, 0] - images[1, 0]).max())
    print(json.dumps({"shape": list(images.shape), "diffs": diffs, "spread": spread}))
    """
)


@pytest.mark.slow  # compiles a pipeline of its own (~10-25 s of CPU); --run-slow runs it
def test_jit_over_four_cpu_devices_equals_single_device_runs(sd_folder: Path) -> None:
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4", "JAX_PLATFORMS": "cpu"}
    done = subprocess.run([sys.executable, "-c", MULTI_DEVICE, str(sd_folder)], env=env, capture_output=True,
                          text=True, timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["shape"] == [4, 1, 32, 32, 3]
    assert max(report["diffs"]) <= 1e-5, report
    assert report["spread"] > 1e-3  # different prompts and keys give different images
