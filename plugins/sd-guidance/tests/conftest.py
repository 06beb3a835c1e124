"""Tiny guidance pipelines built with Diffusers (the test-only oracle), saved, and loaded in difflux."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from difflux_stable_diffusion.testing import gen as gen
from difflux_stable_diffusion.testing import image_input as image_input
from difflux_stable_diffusion.testing import load_difflux as load_difflux
from difflux_stable_diffusion.testing import max_diff as max_diff

_HERE = str(Path(__file__).resolve().parent)
if _HERE not in sys.path:  # --import-mode=importlib: the test-only oracle module sits next to this file
    sys.path.insert(0, _HERE)
from sd_oracle import diffusers_sd_components as diffusers_sd_components  # noqa: E402

PIXEL_TOL = 1 / 255
LATENT_TOL = 1e-4

torch.set_num_threads(1)


def diffusers_pipeline(name: str, components: dict[str, Any], **config: Any) -> Any:
    import diffusers

    pipe = getattr(diffusers, name)(**components, **config)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def compare(ref: Any, ours: Any, *, seed: int = 0, latent: bool = True, pixels: bool = True, **kw: Any) -> None:
    """Same seed, same inputs: final latents within 1e-4 and images within 1/255."""
    kinds = ([("latent", LATENT_TOL)] if latent else []) + ([("np", PIXEL_TOL)] if pixels else [])
    for output_type, tol in kinds:
        a = ref(**kw, generator=gen(seed), output_type=output_type).images
        b = ours(**kw, generator=gen(seed), output_type=output_type).images
        assert max_diff(a, b) <= tol, (output_type, max_diff(a, b))


@pytest.fixture(autouse=True)
def _quiet_difflux_logs(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="difflux")


@pytest.fixture
def g() -> Any:
    """These helpers, as a fixture (test modules cannot import conftest under --import-mode=importlib)."""
    return sys.modules[__name__]


def _pair(tmp_path_factory: pytest.TempPathFactory, name: str, scheduler: str = "DDIMScheduler", **unet: Any) -> Any:
    folder = tmp_path_factory.mktemp(name)
    ref = diffusers_pipeline(name, diffusers_sd_components(folder, scheduler, **unet), requires_safety_checker=False)
    ref.save_pretrained(folder / "saved")
    return ref, load_difflux(folder / "saved")


@pytest.fixture(scope="session")
def sag_pair(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """``(Diffusers StableDiffusionSAGPipeline, difflux's loaded from its folder)``."""
    return _pair(tmp_path_factory, "StableDiffusionSAGPipeline")


@pytest.fixture(scope="session")
def ae_pair(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """``(Diffusers StableDiffusionAttendAndExcitePipeline, difflux's loaded from its folder)``."""
    return _pair(tmp_path_factory, "StableDiffusionAttendAndExcitePipeline")


def open_gates(unet: Any, value: float = 0.7) -> Any:
    """Open GLIGEN's gated layers (a fresh layer starts closed: tanh(0) = 0) so grounding shows."""
    with torch.no_grad():
        for name, p in unet.named_parameters():
            if name.endswith(("alpha_attn", "alpha_dense")):
                p.fill_(value)
    return unet


@pytest.fixture(scope="session")
def gligen_pair(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """``(Diffusers StableDiffusionGLIGENPipeline, difflux's)`` on a tiny ``attention_type="gated"`` UNet."""
    folder = tmp_path_factory.mktemp("gligen")
    components = diffusers_sd_components(folder, attention_type="gated")
    open_gates(components["unet"])
    ref = diffusers_pipeline("StableDiffusionGLIGENPipeline", components, requires_safety_checker=False)
    ref.save_pretrained(folder / "saved")
    return ref, load_difflux(folder / "saved")


@pytest.fixture(scope="session")
def gligen_image_pair(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """``(Diffusers StableDiffusionGLIGENTextImagePipeline, difflux's)``: tiny ``gated-text-image`` UNet,
    tiny CLIP vision encoder and ``CLIPImageProjection``."""
    import diffusers
    from difflux_transformers.testing import tiny_clip_vision
    from transformers import CLIPProcessor

    folder = tmp_path_factory.mktemp("gligen-text-image")
    components = diffusers_sd_components(folder, attention_type="gated-text-image")
    open_gates(components["unet"])
    encoder, image_processor = tiny_clip_vision(0)
    torch.manual_seed(0)
    components.update(
        processor=CLIPProcessor(image_processor=image_processor, tokenizer=components["tokenizer"]),
        image_encoder=encoder,
        image_project=diffusers.pipelines.stable_diffusion.CLIPImageProjection(hidden_size=32),
    )
    ref = diffusers_pipeline("StableDiffusionGLIGENTextImagePipeline", components, requires_safety_checker=False)
    ref.save_pretrained(folder / "saved")
    return ref, load_difflux(folder / "saved")


@pytest.fixture(scope="session")
def diffedit_pair(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """``(Diffusers StableDiffusionDiffEditPipeline, difflux's)`` with a DDIM scheduler and its inverse."""
    import diffusers

    folder = tmp_path_factory.mktemp("diffedit")
    components = diffusers_sd_components(folder)
    components["inverse_scheduler"] = diffusers.DDIMInverseScheduler.from_config(components["scheduler"].config)
    ref = diffusers_pipeline("StableDiffusionDiffEditPipeline", components, requires_safety_checker=False)
    ref.save_pretrained(folder / "saved")
    return ref, load_difflux(folder / "saved")


@pytest.fixture(scope="session")
def p2p_pair(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """``(Diffusers StableDiffusionPix2PixZeroPipeline, difflux's)`` with DDIM and its inverse (no captioner)."""
    import diffusers

    folder = tmp_path_factory.mktemp("pix2pix-zero")
    components = diffusers_sd_components(folder)
    components.update(
        inverse_scheduler=diffusers.DDIMInverseScheduler.from_config(components["scheduler"].config),
        caption_generator=None,
        caption_processor=None,
    )
    ref = diffusers_pipeline("StableDiffusionPix2PixZeroPipeline", components, requires_safety_checker=False)
    ref.save_pretrained(folder / "saved")
    return ref, load_difflux(folder / "saved")
