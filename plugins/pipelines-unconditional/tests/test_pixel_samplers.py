"""DDPMPipeline, DDIMPipeline and PNDMPipeline: conformance, Diffusers parity, the calling conventions."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import PIL.Image
import pytest
import torch
from difflux.testing import PipelineConformance
from difflux_models.unet_2d import UNet2DModel
from difflux_pipelines_unconditional import DDIMPipeline, DDPMPipeline, PNDMPipeline
from difflux_schedulers.ddim import DDIMScheduler
from difflux_schedulers.ddpm import DDPMScheduler
from difflux_schedulers.pndm import PNDMScheduler
from unconditional_helpers import ATOL, assert_same, check_parity, diffusers, quiet, seeded, tiny_unet_2d


def tiny_unet(**overrides: Any) -> UNet2DModel:
    torch.manual_seed(0)
    config: dict[str, Any] = {
        "block_out_channels": (8, 16),
        "layers_per_block": 1,
        "norm_num_groups": 4,
        "sample_size": 8,
        "in_channels": 3,
        "out_channels": 3,
        "down_block_types": ("DownBlock2D", "AttnDownBlock2D"),
        "up_block_types": ("AttnUpBlock2D", "UpBlock2D"),
        "attention_head_dim": 4,
    }
    config.update(overrides)
    return UNet2DModel(**config)


class TestDDPMConformance(PipelineConformance):
    pipeline_class = DDPMPipeline

    def make_components(self) -> dict[str, Any]:
        return {"unet": tiny_unet(), "scheduler": DDPMScheduler(num_train_timesteps=100)}

    def make_inputs(self, seed: int) -> dict[str, Any]:
        return {"generator": seeded(seed), "num_inference_steps": 3, "output_type": "np"}


class TestDDIMConformance(PipelineConformance):
    pipeline_class = DDIMPipeline

    def make_components(self) -> dict[str, Any]:
        return {"unet": tiny_unet(), "scheduler": DDIMScheduler()}

    def make_inputs(self, seed: int) -> dict[str, Any]:
        return {"generator": seeded(seed), "num_inference_steps": 3, "output_type": "np", "eta": 1.0}


class TestPNDMConformance(PipelineConformance):
    pipeline_class = PNDMPipeline

    def make_components(self) -> dict[str, Any]:
        return {"unet": tiny_unet(), "scheduler": PNDMScheduler(skip_prk_steps=True)}

    def make_inputs(self, seed: int) -> dict[str, Any]:
        return {"generator": seeded(seed), "num_inference_steps": 3, "output_type": "np"}


# -- parity with Diffusers --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "scheduler", "extra"),
    [
        ("DDPMPipeline", "DDPMScheduler", {"num_inference_steps": 4}),
        ("DDIMPipeline", "DDIMScheduler", {"num_inference_steps": 4, "eta": 0.0}),
        ("DDIMPipeline", "DDIMScheduler", {"num_inference_steps": 4, "eta": 1.0, "use_clipped_model_output": True}),
        ("PNDMPipeline", "PNDMScheduler", {"num_inference_steps": 4}),
    ],
)
@pytest.mark.parametrize("output_type", ["np", "pil"])
def test_parity(name: str, scheduler: str, extra: dict[str, Any], output_type: str, tmp_path: Path) -> None:
    reference = getattr(diffusers, name)(unet=tiny_unet_2d(), scheduler=getattr(diffusers, scheduler)())
    atol = ATOL if output_type == "np" else 1.0  # PIL: one 8-bit level

    def inputs() -> dict[str, Any]:
        return {"batch_size": 2, "generator": seeded(3), "output_type": output_type, **extra}

    check_parity(reference, inputs, tmp_path, atol)


def test_parity_with_a_list_of_generators(tmp_path: Path) -> None:
    reference = diffusers.DDPMPipeline(unet=tiny_unet_2d(), scheduler=diffusers.DDPMScheduler())

    def inputs() -> dict[str, Any]:
        return {"batch_size": 2, "generator": [seeded(1), seeded(2)], "num_inference_steps": 3, "output_type": "np"}

    check_parity(reference, inputs, tmp_path)


def test_parity_class_conditional_and_rectangular(tmp_path: Path) -> None:
    """A class-conditional UNet with a (height, width) sample size: difflux takes ``class_labels``."""
    unet = tiny_unet_2d(num_class_embeds=4, sample_size=(8, 16))
    ref = quiet(diffusers.DDIMPipeline(unet=unet, scheduler=diffusers.DDIMScheduler()))
    ref.save_pretrained(tmp_path)
    pipe = quiet(DDIMPipeline.from_pretrained(tmp_path))
    labels = [0, 3]
    out = pipe(batch_size=2, generator=seeded(0), num_inference_steps=3, class_labels=labels, output_type="pt").images
    assert out.shape == (2, 3, 8, 16)
    # the same loop written against Diffusers' own scheduler and model
    g = seeded(0)
    sample = torch.randn((2, 3, 8, 16), generator=g)
    ref.scheduler.set_timesteps(3)
    with torch.no_grad():
        for t in ref.scheduler.timesteps:
            eps = unet(sample, t, class_labels=torch.tensor(labels)).sample
            sample = ref.scheduler.step(eps, t, sample, eta=0.0, generator=g).prev_sample
    assert_same(out, (sample / 2 + 0.5).clamp(0, 1))


def test_ddim_pipeline_converts_another_scheduler() -> None:
    pipe = DDIMPipeline(unet=tiny_unet(), scheduler=DDPMScheduler(beta_schedule="squaredcos_cap_v2"))
    assert isinstance(pipe.scheduler, DDIMScheduler)
    assert pipe.scheduler.config.beta_schedule == "squaredcos_cap_v2"


# -- the calling conventions ------------------------------------------------------------------


def make_ddim() -> DDIMPipeline:
    return quiet(DDIMPipeline(unet=tiny_unet(), scheduler=DDIMScheduler()))


def test_output_types_agree() -> None:
    pipe = make_ddim()
    run = {"batch_size": 2, "num_inference_steps": 2}
    arr = pipe(generator=seeded(0), output_type="np", **run).images
    pt = pipe(generator=seeded(0), output_type="pt", **run).images
    pil = pipe(generator=seeded(0), output_type="pil", **run).images
    assert isinstance(arr, np.ndarray) and arr.shape == (2, 8, 8, 3)
    assert isinstance(pt, torch.Tensor) and pt.shape == (2, 3, 8, 8)
    assert isinstance(pil, list) and all(isinstance(i, PIL.Image.Image) for i in pil)
    assert_same(pt.permute(0, 2, 3, 1), arr)
    assert_same(np.stack([np.asarray(i) for i in pil]), np.round(arr * 255), atol=1.0)
    (tuple_images,) = pipe(generator=seeded(0), output_type="np", return_dict=False, **run)
    assert_same(tuple_images, arr)


def test_latent_output_is_the_sample_before_postprocessing() -> None:
    pipe = make_ddim()
    sample = pipe(generator=seeded(0), num_inference_steps=2, output_type="latent").images
    images = pipe(generator=seeded(0), num_inference_steps=2, output_type="pt").images
    assert_same((sample / 2 + 0.5).clamp(0, 1), images)


def test_generator_list_must_match_batch() -> None:
    with pytest.raises(ValueError, match="2 generators for batch_size=3"):
        make_ddim()(batch_size=3, generator=[seeded(0), seeded(1)], num_inference_steps=2)


def test_list_of_generators_gives_per_image_reproducibility() -> None:
    pipe = make_ddim()
    pair = pipe(batch_size=2, generator=[seeded(5), seeded(6)], num_inference_steps=2, output_type="np").images
    alone = pipe(batch_size=1, generator=[seeded(6)], num_inference_steps=2, output_type="np").images
    assert_same(pair[1:], alone)


def test_callback_sees_and_replaces_latents() -> None:
    pipe = make_ddim()
    seen: list[tuple[int, int, tuple[int, ...]]] = []

    def callback(p: Any, i: int, t: Any, tensors: dict[str, Any]) -> dict[str, Any]:
        assert p is pipe
        seen.append((i, int(t), tuple(tensors["latents"].shape)))
        return {"latents": torch.zeros_like(tensors["latents"])}

    out = pipe(num_inference_steps=3, output_type="np", callback_on_step_end=callback).images
    assert [s[0] for s in seen] == [0, 1, 2]
    assert [s[1] for s in seen] == pipe.scheduler.timesteps.tolist()
    assert all(s[2] == (1, 3, 8, 8) for s in seen)
    assert_same(out, np.full((1, 8, 8, 3), 0.5))  # zero latents are mid-grey


def test_callback_tensor_inputs_are_checked() -> None:
    with pytest.raises(ValueError, match="'prompt_embeds'"):
        make_ddim()(
            num_inference_steps=2,
            callback_on_step_end=lambda *a: None,
            callback_on_step_end_tensor_inputs=["prompt_embeds"],
        )


def test_class_labels_on_unconditional_unet_are_refused() -> None:
    with pytest.raises(ValueError, match="unconditional"):
        make_ddim()(num_inference_steps=2, class_labels=1)


def test_class_conditional_unet_needs_labels_and_checks_range() -> None:
    pipe = quiet(DDPMPipeline(unet=tiny_unet(num_class_embeds=3), scheduler=DDPMScheduler(num_train_timesteps=10)))
    with pytest.raises(ValueError, match="class_labels="):
        pipe(num_inference_steps=2)
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        pipe(num_inference_steps=2, class_labels=3)
    a = pipe(batch_size=2, generator=seeded(0), num_inference_steps=2, class_labels=1, output_type="np").images
    b = pipe(batch_size=2, generator=seeded(0), num_inference_steps=2, class_labels=[1, 1], output_type="np").images
    c = pipe(batch_size=2, generator=seeded(0), num_inference_steps=2, class_labels=[1, 2], output_type="np").images
    assert_same(a, b)
    assert float(np.abs(b[1] - c[1]).max()) > 1e-4


def test_progress_bar_counts_steps(capsys: pytest.CaptureFixture[str]) -> None:
    pipe = DDIMPipeline(unet=tiny_unet(), scheduler=DDIMScheduler())
    pipe(num_inference_steps=3, output_type="np")
    assert "3/3" in capsys.readouterr().err


def test_a_swapped_in_sigma_scheduler_gets_scaled_noise_and_inputs() -> None:
    """Noise is scaled by ``init_noise_sigma`` of the schedule set for this call, and the UNet sees
    ``scale_model_input`` of it (unit variance), as sigma samplers such as Euler need."""
    from difflux_schedulers.euler import EulerAncestralDiscreteScheduler

    pipe = make_ddim()
    pipe.register_modules(scheduler=EulerAncestralDiscreteScheduler.from_config(pipe.scheduler.config))
    first: list[torch.Tensor] = []
    pipe.unet.register_forward_pre_hook(lambda m, args: first.append(args[0]) if not first else None)
    pipe(batch_size=4, generator=seeded(0), num_inference_steps=5, output_type="np")
    assert 0.7 < float(first[0].std()) < 1.3
