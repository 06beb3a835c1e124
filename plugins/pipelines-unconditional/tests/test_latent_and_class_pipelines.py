"""LDMPipeline, DiTPipeline and ConsistencyModelPipeline: conformance, Diffusers parity, their own options."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from difflux.testing import PipelineConformance
from difflux_models.autoencoder_kl import AutoencoderKL
from difflux_models.transformers.dit import DiTTransformer2DModel
from difflux_models.unet_2d import UNet2DModel
from difflux_models.vq_model import VQModel
from difflux_pipelines_unconditional import ConsistencyModelPipeline, DiTPipeline, LDMPipeline
from difflux_schedulers.consistency import CMStochasticIterativeScheduler
from difflux_schedulers.ddim import DDIMScheduler
from unconditional_helpers import assert_same, check_parity, diffusers, quiet, seeded, tiny_unet_2d

VQ = {
    "block_out_channels": (8, 16),
    "norm_num_groups": 4,
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ("DownEncoderBlock2D", "DownEncoderBlock2D"),
    "up_block_types": ("UpDecoderBlock2D", "UpDecoderBlock2D"),
    "latent_channels": 3,
    "num_vq_embeddings": 16,
    "vq_embed_dim": 3,
}
DIT = {
    "sample_size": 4,
    "patch_size": 2,
    "in_channels": 4,
    "out_channels": 8,
    "num_layers": 1,
    "attention_head_dim": 4,
    "num_attention_heads": 2,
    "norm_num_groups": 1,
    "num_embeds_ada_norm": 1000,
}
VAE = {
    "block_out_channels": (8,),
    "norm_num_groups": 4,
    "latent_channels": 4,
    "down_block_types": ("DownEncoderBlock2D",),
    "up_block_types": ("UpDecoderBlock2D",),
}
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
CM: dict[str, Any] = {"num_train_timesteps": 40, "sigma_min": 0.002, "sigma_max": 80.0}
ID2LABEL = {0: "tench, Tinca tinca", 1: "goldfish", 2: "great white shark, white shark"}


def seeded_model(cls: Any, config: dict[str, Any]) -> Any:
    torch.manual_seed(0)
    return cls(**config).eval()


# -- LDM --------------------------------------------------------------------------------------


class TestLDMConformance(PipelineConformance):
    pipeline_class = LDMPipeline

    def make_components(self) -> dict[str, Any]:
        return {
            "vqvae": seeded_model(VQModel, VQ),
            "unet": seeded_model(UNet2DModel, {**UNET, "sample_size": 4}),
            "scheduler": DDIMScheduler(),
        }

    def make_inputs(self, seed: int) -> dict[str, Any]:
        return {"generator": seeded(seed), "num_inference_steps": 2, "output_type": "np", "eta": 1.0}


@pytest.mark.parametrize("eta", [0.0])  # at eta > 0 Diffusers draws the noise from the global RNG, difflux
def test_ldm_parity(eta: float, tmp_path: Path) -> None:  # from the generator (test_run_contract checks that)
    torch.manual_seed(0)
    vqvae = diffusers.VQModel(**VQ)
    reference = diffusers.LDMPipeline(
        vqvae=vqvae, unet=tiny_unet_2d(sample_size=4), scheduler=diffusers.DDIMScheduler()
    )

    def inputs() -> dict[str, Any]:
        torch.manual_seed(11)  # Diffusers draws eta noise from the global generator
        return {"batch_size": 2, "generator": seeded(0), "num_inference_steps": 3, "eta": eta, "output_type": "np"}

    check_parity(reference, inputs, tmp_path)


def test_ldm_latent_output_skips_the_decoder() -> None:
    pipe = quiet(LDMPipeline(**TestLDMConformance().make_components()))
    latents = pipe(generator=seeded(0), num_inference_steps=2, output_type="latent").images
    images = pipe(generator=seeded(0), num_inference_steps=2, output_type="pt").images
    assert latents.shape == (1, 3, 4, 4) and images.shape == (1, 3, 8, 8)
    with torch.no_grad():
        decoded = pipe.vqvae.decode(latents / pipe.vqvae.config.scaling_factor).sample
    assert_same(images, (decoded / 2 + 0.5).clamp(0, 1))


# -- DiT --------------------------------------------------------------------------------------


class TestDiTConformance(PipelineConformance):
    pipeline_class = DiTPipeline

    def make_components(self) -> dict[str, Any]:
        return {
            "transformer": seeded_model(DiTTransformer2DModel, DIT),
            "vae": seeded_model(AutoencoderKL, VAE),
            "scheduler": DDIMScheduler(),
            "id2label": ID2LABEL,
        }

    def make_pipeline(self) -> DiTPipeline:
        components = self.make_components()
        pipe = DiTPipeline(**components)
        pipe.set_progress_bar_config(disable=True)
        return pipe

    def make_inputs(self, seed: int) -> dict[str, Any]:
        return {"class_labels": [1, 2], "generator": seeded(seed), "num_inference_steps": 2, "output_type": "np"}


@pytest.mark.parametrize("guidance_scale", [1.0, 4.0])
def test_dit_parity(guidance_scale: float, tmp_path: Path) -> None:
    torch.manual_seed(0)
    transformer = diffusers.DiTTransformer2DModel(**DIT)
    vae = diffusers.AutoencoderKL(**VAE)
    reference = diffusers.DiTPipeline(transformer=transformer, vae=vae, scheduler=diffusers.DDIMScheduler())

    def inputs() -> dict[str, Any]:
        return {
            "class_labels": [1, 2],
            "guidance_scale": guidance_scale,
            "generator": seeded(0),
            "num_inference_steps": 3,
            "output_type": "np",
        }

    check_parity(reference, inputs, tmp_path)


def test_dit_labels_from_id2label(tmp_path: Path) -> None:
    pipe = DiTPipeline(**TestDiTConformance().make_components())
    assert pipe.get_label_ids("white shark") == [2]
    assert pipe.get_label_ids(["goldfish", "great white shark", "Tinca tinca"]) == [1, 2, 0]
    with pytest.raises(ValueError, match="'hammerhead'"):
        pipe.get_label_ids("hammerhead")
    pipe.save_pretrained(tmp_path)
    again = DiTPipeline.from_pretrained(tmp_path)
    assert again.get_label_ids("white shark") == [2]


def test_dit_latent_output_and_callback() -> None:
    pipe = quiet(DiTPipeline(**TestDiTConformance().make_components()))
    shapes: list[tuple[int, ...]] = []

    def callback(p: Any, i: int, t: Any, tensors: dict[str, Any]) -> None:
        shapes.append(tuple(tensors["latents"].shape))

    out = pipe(class_labels=[0, 1, 2], num_inference_steps=2, output_type="latent", callback_on_step_end=callback)
    assert out.images.shape == (3, 4, 4, 4)
    assert shapes == [(3, 4, 4, 4)] * 2  # the conditional half only


# -- consistency models -----------------------------------------------------------------------


class TestConsistencyConformance(PipelineConformance):
    pipeline_class = ConsistencyModelPipeline

    def make_components(self) -> dict[str, Any]:
        return {
            "unet": seeded_model(UNet2DModel, {**UNET, "num_class_embeds": 4}),
            "scheduler": CMStochasticIterativeScheduler(**CM),
        }

    def make_inputs(self, seed: int) -> dict[str, Any]:
        return {"generator": seeded(seed), "class_labels": 1, "output_type": "np"}


@pytest.mark.parametrize(
    "extra",
    [
        {"num_inference_steps": 1, "class_labels": [0, 3]},
        {"num_inference_steps": None, "timesteps": [22, 0], "class_labels": [2, 1]},
    ],
    ids=["onestep", "multistep"],
)
def test_consistency_parity(extra: dict[str, Any], tmp_path: Path) -> None:
    reference = diffusers.ConsistencyModelPipeline(
        unet=tiny_unet_2d(num_class_embeds=4), scheduler=diffusers.CMStochasticIterativeScheduler(**CM)
    )

    def inputs() -> dict[str, Any]:
        return {"batch_size": 2, "generator": seeded(0), "output_type": "np", **extra}

    check_parity(reference, inputs, tmp_path)


def test_consistency_random_labels_follow_the_global_seed() -> None:
    pipe = quiet(ConsistencyModelPipeline(**TestConsistencyConformance().make_components()))
    torch.manual_seed(4)
    a = pipe(batch_size=3, generator=seeded(0), output_type="np").images
    torch.manual_seed(4)
    b = pipe(batch_size=3, generator=seeded(0), output_type="np").images
    assert_same(a, b)
    assert np.isfinite(a).all()
