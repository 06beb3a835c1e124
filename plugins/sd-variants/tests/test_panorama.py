"""StableDiffusionPanoramaPipeline (MultiDiffusion) against Diffusers: same folder, same seed, same panorama."""

from __future__ import annotations

from typing import Any

import pytest

#: an 8x-downsampling VAE, so that the 64-latent windows of MultiDiffusion tile a small panorama
VAE8 = {
    "block_out_channels": [4, 4, 8, 8],
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
    "layers_per_block": 1,
}


@pytest.fixture(scope="module")
def panorama(sv: Any, tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Any, Any]]:
    folder = tmp_path_factory.mktemp("panorama")
    out = {}
    for sched in ("DDIMScheduler", "EulerDiscreteScheduler"):
        components = sv.sd_components(folder, sched, vae=VAE8)
        ref, ours = sv.saved_pair(folder / sched, "StableDiffusionPanoramaPipeline", components,
                                  requires_safety_checker=False)
        out[sched] = (ref, ours)
    return out


@pytest.mark.parametrize(
    ("sched", "options"),
    [
        pytest.param("DDIMScheduler", {"view_batch_size": 1}, id="ddim", marks=pytest.mark.slow),
        pytest.param("DDIMScheduler", {"view_batch_size": 2, "negative_prompt": "blue", "output_type": "latent"},
                     id="batched-views", marks=pytest.mark.slow),
        pytest.param("EulerDiscreteScheduler", {"view_batch_size": 1, "output_type": "latent"},
                     id="euler-state-per-view"),
        pytest.param("DDIMScheduler", {"circular_padding": True, "view_batch_size": 5, "output_type": "np"},
                     id="circular"),
    ],
)
def test_panorama_parity(sv: Any, panorama: Any, sched: str, options: dict[str, Any]) -> None:
    ref, ours = panorama[sched]
    kw = {"prompt": sv.PROMPT, "height": 64, "width": 576, "num_inference_steps": 2, "output_type": "np", **options}
    a, b = ref(**kw, generator=sv.gen(0)).images, ours(**kw, generator=sv.gen(0)).images
    latent = kw["output_type"] == "latent"
    assert tuple(a.shape) == ((1, 4, 8, 72) if latent else (1, 64, 576, 3))
    assert sv.max_diff(a, b) <= (sv.LATENT_TOL if latent else sv.PIXEL_TOL)


@pytest.mark.slow
def test_panorama_guidance_rescale_applies(sv: Any, panorama: Any) -> None:
    """Diffusers 0.42.1's panorama never rescales (its do_classifier_free_guidance property is always False);
    difflux applies guidance_rescale as the SD pipelines do, so the output moves away from the unrescaled one."""
    ref, ours = panorama["DDIMScheduler"]
    kw = {"prompt": sv.PROMPT, "height": 64, "width": 576, "num_inference_steps": 2, "output_type": "latent"}
    plain = ours(**kw, generator=sv.gen(0)).images
    rescaled = ours(**kw, guidance_rescale=0.7, generator=sv.gen(0)).images
    assert sv.max_diff(ref(**kw, guidance_rescale=0.7, generator=sv.gen(0)).images, plain) <= sv.LATENT_TOL
    assert sv.max_diff(plain, rescaled) > 1e-3


def test_panorama_views() -> None:
    from difflux_sd_variants.pipeline_panorama import panorama_views

    assert panorama_views(64, 80) == [(0, 64, 0, 64), (0, 64, 8, 72), (0, 64, 16, 80)]
    assert panorama_views(8, 16) == [(0, 64, 0, 64)]
    wrap = panorama_views(64, 80, circular=True)
    assert len(wrap) == 10 and wrap[-1] == (0, 64, 72, 136)


@pytest.mark.parametrize(
    ("bad", "match"),
    [({"view_batch_size": 0}, "view_batch_size"), ({"circular_padding": "yes"}, "circular_padding"),
     ({"width": 100}, "multiple")],
)
def test_panorama_bad_input(sv: Any, panorama: Any, bad: dict[str, Any], match: str) -> None:
    _, ours = panorama["DDIMScheduler"]
    with pytest.raises((ValueError, TypeError), match=match):
        ours(prompt=sv.PROMPT, height=64, width=576, num_inference_steps=2, **bad)
