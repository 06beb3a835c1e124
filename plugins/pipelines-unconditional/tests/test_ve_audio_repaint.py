"""ScoreSdeVePipeline, KarrasVePipeline, DanceDiffusionPipeline, RePaintPipeline and RePaintScheduler."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import PIL.Image
import pytest
import torch
from difflux import DiffusionPipeline
from difflux.pipeline_utils import AudioPipelineOutput
from difflux.testing import PipelineConformance, SchedulerConformance
from difflux_models.unet_1d import UNet1DModel
from difflux_models.unet_2d import UNet2DModel
from difflux_pipelines_unconditional import (
    DanceDiffusionPipeline,
    KarrasVePipeline,
    RePaintPipeline,
    RePaintScheduler,
    ScoreSdeVePipeline,
)
from difflux_pipelines_unconditional.repaint import preprocess_mask
from difflux_pipelines_unconditional.repaint_scheduler import repaint_timesteps
from difflux_schedulers.euler import EulerDiscreteScheduler
from difflux_schedulers.karras_ve import KarrasVeScheduler
from difflux_schedulers.score_sde_ve import ScoreSdeVeScheduler
from unconditional_helpers import assert_same, check_parity, diffusers, quiet, seeded, tiny_unet_2d

UNET = {
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
UNET_1D = {
    "sample_size": 64,
    "sample_rate": 16000,
    "in_channels": 2,
    "out_channels": 2,
    "extra_in_channels": 16,
    "time_embedding_dim": 16,
    "block_out_channels": (32, 32, 64),
}


def unet() -> UNet2DModel:
    torch.manual_seed(0)
    return UNet2DModel(**UNET)  # type: ignore[arg-type]


def unet_1d() -> UNet1DModel:
    torch.manual_seed(0)
    return UNet1DModel(**UNET_1D)  # type: ignore[arg-type]


def masked_inputs() -> tuple[torch.Tensor, torch.Tensor]:
    g = seeded(9)
    image = torch.rand((1, 3, 8, 8), generator=g) * 2 - 1
    mask = (torch.rand((1, 8, 8), generator=g) > 0.5).float()
    return image, mask


# -- score SDE (VE) and Karras VE ---------------------------------------------------------------


class TestScoreSdeVeConformance(PipelineConformance):
    pipeline_class = ScoreSdeVePipeline

    def make_components(self) -> dict[str, Any]:
        return {"unet": unet(), "scheduler": ScoreSdeVeScheduler()}

    def make_inputs(self, seed: int) -> dict[str, Any]:
        return {"generator": seeded(seed), "num_inference_steps": 2, "output_type": "np"}


class TestKarrasVeConformance(PipelineConformance):
    pipeline_class = KarrasVePipeline

    def make_components(self) -> dict[str, Any]:
        return {"unet": unet(), "scheduler": KarrasVeScheduler()}

    def make_inputs(self, seed: int) -> dict[str, Any]:
        return {"generator": seeded(seed), "num_inference_steps": 2, "output_type": "np"}


def test_score_sde_ve_parity(tmp_path: Path) -> None:
    reference = diffusers.ScoreSdeVePipeline(unet=tiny_unet_2d(), scheduler=diffusers.ScoreSdeVeScheduler())

    def inputs() -> dict[str, Any]:
        return {"batch_size": 2, "generator": seeded(0), "num_inference_steps": 3, "output_type": "np"}

    check_parity(reference, inputs, tmp_path)


def test_karras_ve_parity(tmp_path: Path) -> None:
    """Diffusers writes its deprecated scheduler as ``["deprecated", "KarrasVeScheduler"]`` and cannot read
    that back itself; difflux reads it, and writes ``["diffusers", ...]``, which Diffusers loads."""
    reference = diffusers.KarrasVePipeline(unet=tiny_unet_2d(), scheduler=diffusers.KarrasVeScheduler())
    reference.save_pretrained(tmp_path / "diffusers")
    assert json.loads((tmp_path / "diffusers/model_index.json").read_text())["scheduler"][0] == "deprecated"

    def inputs() -> dict[str, Any]:
        return {"batch_size": 2, "generator": seeded(0), "num_inference_steps": 3, "output_type": "np"}

    quiet(reference)
    expected = reference(**inputs()).images
    pipe = quiet(DiffusionPipeline.from_pretrained(tmp_path / "diffusers"))
    assert isinstance(pipe, KarrasVePipeline)
    assert_same(pipe(**inputs()).images, expected)
    pipe.save_pretrained(tmp_path / "difflux")
    again = quiet(diffusers.KarrasVePipeline.from_pretrained(tmp_path / "difflux"))
    assert_same(again(**inputs()).images, expected)


# -- Dance Diffusion ------------------------------------------------------------------------------


class TestDanceDiffusionConformance(PipelineConformance):
    pipeline_class = DanceDiffusionPipeline

    def make_components(self) -> dict[str, Any]:
        return {"unet": unet_1d(), "scheduler": EulerDiscreteScheduler()}

    def make_inputs(self, seed: int) -> dict[str, Any]:
        return {"generator": seeded(seed), "num_inference_steps": 2}


def test_dance_diffusion_parity(tmp_path: Path) -> None:
    torch.manual_seed(0)
    reference = diffusers.DanceDiffusionPipeline(
        unet=diffusers.UNet1DModel(**UNET_1D), scheduler=diffusers.EulerDiscreteScheduler()
    )

    def inputs() -> dict[str, Any]:
        return {"batch_size": 2, "generator": seeded(0), "num_inference_steps": 3, "audio_length_in_s": 0.005}

    check_parity(reference, inputs, tmp_path)


def test_dance_diffusion_lengths_and_outputs() -> None:
    pipe = quiet(DanceDiffusionPipeline(unet=unet_1d(), scheduler=EulerDiscreteScheduler()))
    out = pipe(generator=seeded(0), num_inference_steps=2)
    assert isinstance(out, AudioPipelineOutput)
    assert out.audios.shape == (1, 2, 64)  # sample_size samples by default
    cut = pipe(generator=seeded(0), num_inference_steps=2, audio_length_in_s=70 / 16000, output_type="pt").audios
    assert isinstance(cut, torch.Tensor) and cut.shape == (1, 2, 70)  # made as 72, cut to 70
    assert float(cut.abs().max()) <= 1.0
    with pytest.raises(ValueError, match="too short"):
        pipe(num_inference_steps=2, audio_length_in_s=0.0001)


# -- RePaint --------------------------------------------------------------------------------------


class TestRePaintSchedulerConformance(SchedulerConformance):
    scheduler_class = RePaintScheduler
    configs = [{}, {"eta": 0.5}, {"beta_schedule": "squaredcos_cap_v2", "clip_sample": False}]


def test_repaint_timesteps_jump_back() -> None:
    assert repaint_timesteps(4, 10, 10) == [3, 2, 1, 0]
    # jumps of 2 back up at steps 2 and 0, once each (jump_n_sample - 1)
    walk = [5, 4, 3, 2, 3, 4, 3, 2, 1, 0, 1, 2, 1, 0]
    assert repaint_timesteps(6, 2, 2) == walk
    scheduler = RePaintScheduler(num_train_timesteps=60)
    scheduler.set_timesteps(6, 2, 2)
    assert scheduler.timesteps.tolist() == [10 * t for t in walk]


def test_repaint_scheduler_matches_diffusers() -> None:
    ours, theirs = RePaintScheduler(eta=0.7), diffusers.RePaintScheduler(eta=0.7)
    ours.set_timesteps(20, 5, 3)
    theirs.set_timesteps(20, 5, 3)
    assert ours.timesteps.tolist() == theirs.timesteps.tolist()
    image, mask = masked_inputs()
    sample = torch.randn((1, 3, 8, 8), generator=seeded(1))
    for t in ours.timesteps[:8]:
        eps = 0.3 * sample + 0.1
        a = ours.step(eps, t, sample, image, mask, seeded(2)).prev_sample
        b = theirs.step(eps, t, sample, image, mask, seeded(2)).prev_sample
        assert_same(a, b, 1e-5)
        sample = a
    assert_same(ours.undo_step(sample, 100, seeded(3)), theirs.undo_step(sample, 100, seeded(3)), 1e-5)


class TestRePaintConformance(PipelineConformance):
    pipeline_class = RePaintPipeline

    def make_components(self) -> dict[str, Any]:
        return {"unet": unet(), "scheduler": RePaintScheduler()}

    def make_inputs(self, seed: int) -> dict[str, Any]:
        image, mask = masked_inputs()
        return {
            "image": image,
            "mask_image": mask,
            "generator": seeded(seed),
            "num_inference_steps": 4,
            "jump_length": 2,
            "jump_n_sample": 2,
            "output_type": "np",
        }


@pytest.mark.parametrize("eta", [0.0, 0.5])
def test_repaint_parity(eta: float, tmp_path: Path) -> None:
    reference = diffusers.RePaintPipeline(unet=tiny_unet_2d(), scheduler=diffusers.RePaintScheduler())
    image, mask = masked_inputs()

    def inputs() -> dict[str, Any]:
        return {
            "image": image,
            "mask_image": mask,
            "generator": seeded(0),
            "num_inference_steps": 6,
            "jump_length": 2,
            "jump_n_sample": 2,
            "eta": eta,
            "output_type": "np",
        }

    check_parity(reference, inputs, tmp_path)


def test_repaint_keeps_known_pixels_and_takes_pil() -> None:
    """With ``mask == 1`` everywhere the last step returns the original image (a noise-free known part)."""
    pipe = quiet(RePaintPipeline(unet=unet(), scheduler=RePaintScheduler()))
    grey = np.zeros((8, 8, 3), dtype=np.uint8)
    grey[:, :4] = 255
    picture = PIL.Image.fromarray(grey)
    everywhere = PIL.Image.fromarray(np.full((32, 32), 255, dtype=np.uint8))
    assert preprocess_mask(everywhere).shape == (1, 1, 32, 32)
    out = pipe(picture, torch.ones((1, 1, 8, 8)), num_inference_steps=4, generator=seeded(0), output_type="np")
    assert_same(out.images[0], grey / 255.0, atol=1e-4)
