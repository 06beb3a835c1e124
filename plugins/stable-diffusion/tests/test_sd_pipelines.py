"""Stable Diffusion pipelines built from difflux components: conformance, round trips to Diffusers, behaviour."""

from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from difflux import DiffusionPipeline
from difflux.config import read_json
from difflux.testing import PipelineConformance
from difflux_models import AutoencoderKL, UNet2DConditionModel
from difflux_schedulers import DDIMScheduler
from difflux_stable_diffusion import (
    StableDiffusionImg2ImgPipeline,
    StableDiffusionInpaintPipeline,
    StableDiffusionPipeline,
    StableDiffusionSafetyChecker,
)
from difflux_transformers.testing import tiny_clip_text_model, tiny_clip_tokenizer

_VOCAB = Path(tempfile.mkdtemp(prefix="difflux-sd-vocab-"))
PROMPT = "a photo of a cat"


def difflux_components(**unet: Any) -> dict[str, Any]:
    torch.manual_seed(0)
    config: dict[str, Any] = {
        "block_out_channels": (4, 8),
        "layers_per_block": 1,
        "sample_size": 16,
        "in_channels": 4,
        "out_channels": 4,
        "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D"),
        "up_block_types": ("CrossAttnUpBlock2D", "UpBlock2D"),
        "cross_attention_dim": 32,
        "norm_num_groups": 2,
        "attention_head_dim": 2,
    }
    config.update(unet)
    unet_model = UNet2DConditionModel(**config)
    torch.manual_seed(0)
    vae = AutoencoderKL(
        block_out_channels=(4, 8),
        in_channels=3,
        out_channels=3,
        latent_channels=4,
        norm_num_groups=2,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        sample_size=32,
    )
    return {
        "unet": unet_model,
        "vae": vae,
        "text_encoder": tiny_clip_text_model(0),
        "tokenizer": tiny_clip_tokenizer(_VOCAB),
        "scheduler": DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear"),
        "safety_checker": None,
        "feature_extractor": None,
        "requires_safety_checker": False,
    }


class TestStableDiffusionConformance(PipelineConformance):
    pipeline_class = StableDiffusionPipeline

    def make_components(self) -> dict[str, Any]:
        return difflux_components()

    def make_inputs(self, seed: int) -> dict[str, Any]:
        return {
            "prompt": PROMPT,
            "generator": torch.Generator().manual_seed(seed),
            "num_inference_steps": 2,
            "output_type": "np",
        }


def _quiet(pipe: Any) -> Any:
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_saved_folder_loads_in_diffusers(sd: Any, tmp_path: Path) -> None:
    import diffusers

    pipe = _quiet(StableDiffusionPipeline(**difflux_components()))
    pipe.save_pretrained(tmp_path / "saved")
    index = read_json(tmp_path / "saved" / "model_index.json")
    assert index["text_encoder"] == ["transformers", "CLIPTextModel"]
    assert index["unet"] == ["diffusers", "UNet2DConditionModel"]
    assert index["safety_checker"] == [None, None]
    theirs = diffusers.StableDiffusionPipeline.from_pretrained(tmp_path / "saved")
    theirs.set_progress_bar_config(disable=True)
    kw: dict[str, Any] = {"prompt": PROMPT, "num_inference_steps": 2, "output_type": "np"}
    assert sd.max_diff(pipe(**kw, generator=sd.gen(0)).images, theirs(**kw, generator=sd.gen(0)).images) <= 1 / 255


def test_components_are_shared_across_pipelines() -> None:
    txt2img = StableDiffusionPipeline(**difflux_components())
    for cls in (StableDiffusionImg2ImgPipeline, StableDiffusionInpaintPipeline):
        other = cls(**txt2img.components)
        for name, component in txt2img.components.items():
            assert other.components[name] is component
        assert other.unet.conv_in.weight.data_ptr() == txt2img.unet.conv_in.weight.data_ptr()


def test_img2img_runs_on_shared_components(sd: Any) -> None:
    img2img = _quiet(StableDiffusionImg2ImgPipeline(**StableDiffusionPipeline(**difflux_components()).components))
    for image in (
        sd.image_input(),
        np.asarray(sd.image_input(), dtype=np.float32)[None] / 255,
        torch.rand(1, 3, 32, 32),
    ):
        out = img2img(PROMPT, image=image, strength=0.5, num_inference_steps=4, output_type="np", generator=sd.gen(0))
        assert out.images.shape == (1, 32, 32, 3)


def test_missing_safety_checker_is_said_once(caplog: pytest.LogCaptureFixture) -> None:
    from difflux_stable_diffusion import pipeline_stable_diffusion as module

    module._told.clear()
    components = difflux_components()
    components["requires_safety_checker"] = True
    with caplog.at_level(logging.INFO, logger="difflux"):
        StableDiffusionPipeline(**components)
        StableDiffusionPipeline(**components)
    said = [r for r in caplog.records if "without a safety checker" in r.getMessage()]
    assert len(said) == 1 and said[0].levelno == logging.WARNING
    caplog.clear()
    components["requires_safety_checker"] = False
    with caplog.at_level(logging.INFO, logger="difflux"):
        StableDiffusionPipeline(**components)
        StableDiffusionPipeline(**components)
    said = [r for r in caplog.records if "requires_safety_checker=False" in r.getMessage()]
    assert len(said) == 1


def test_truncation_warning_names_the_dropped_text(caplog: pytest.LogCaptureFixture) -> None:
    components = difflux_components()
    components["tokenizer"] = tiny_clip_tokenizer(_VOCAB, model_max_length=8)
    components["text_encoder"] = tiny_clip_text_model(0, max_position_embeddings=8)
    pipe = StableDiffusionPipeline(**components)
    with caplog.at_level(logging.WARNING, logger="difflux"):
        embeds = pipe.encode_prompt("a cat on the red horse of the blue dog")
    assert embeds.embeds.shape[1] == 8
    warning = " ".join(r.getMessage() for r in caplog.records)
    assert "dropped" in warning and "blue dog" in warning and "red horse" not in warning


def test_clip_skip_uses_an_earlier_layer() -> None:
    pipe = StableDiffusionPipeline(**difflux_components())
    ids = pipe.tokenizer([PROMPT], padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
    hidden = pipe.text_encoder(ids, output_hidden_states=True).hidden_states
    expected = pipe.text_encoder.final_layer_norm(hidden[-3])
    got = pipe.encode_prompt(PROMPT, clip_skip=2).embeds
    assert torch.allclose(got, expected, atol=1e-6)
    assert not torch.allclose(pipe.encode_prompt(PROMPT).embeds, expected, atol=1e-3)


def test_prompt_embeds_give_the_same_images(sd: Any) -> None:
    pipe = _quiet(StableDiffusionPipeline(**difflux_components()))
    kw: dict[str, Any] = {"num_inference_steps": 2, "output_type": "np", "negative_prompt": None}
    by_text = pipe(PROMPT, generator=sd.gen(0), **kw).images
    embeds = pipe.encode_prompt(PROMPT, guidance=True)
    by_embeds = pipe(prompt_embeds=embeds.embeds, negative_prompt_embeds=embeds.negative, generator=sd.gen(0), **kw)
    assert sd.max_diff(by_text, by_embeds.images) == 0.0
    with pytest.raises(ValueError, match="prompt or prompt_embeds, not both"):
        pipe(PROMPT, prompt_embeds=embeds.embeds, num_inference_steps=1)


def test_callback_on_step_end_can_replace_latents(sd: Any) -> None:
    pipe = _quiet(StableDiffusionPipeline(**difflux_components()))
    seen: list[int] = []

    def zero(p: Any, i: int, t: Any, tensors: dict[str, Any]) -> dict[str, Any]:
        seen.append(i)
        return {"latents": torch.zeros_like(tensors["latents"])}

    out = pipe(PROMPT, num_inference_steps=2, output_type="latent", generator=sd.gen(0), callback_on_step_end=zero)
    assert seen == [0, 1] and float(out.images.abs().max()) == 0.0
    with pytest.raises(ValueError, match="does not provide"):
        pipe(PROMPT, num_inference_steps=1, callback_on_step_end=zero, callback_on_step_end_tensor_inputs=["noise"])


def _safety_checker() -> Any:
    from transformers import CLIPConfig

    config = CLIPConfig(
        text_config={"hidden_size": 32, "intermediate_size": 37, "num_hidden_layers": 1, "num_attention_heads": 4},
        vision_config={
            "hidden_size": 32,
            "intermediate_size": 37,
            "num_hidden_layers": 1,
            "num_attention_heads": 4,
            "image_size": 32,
            "patch_size": 8,
        },
        projection_dim=16,
    )
    torch.manual_seed(0)
    checker = StableDiffusionSafetyChecker(config).eval()
    with torch.no_grad():
        checker.concept_embeds.normal_()
        checker.special_care_embeds.normal_()
        checker.special_care_embeds_weights.fill_(2.0)  # never "special care"
        checker.concept_embeds_weights.fill_(-2.0)  # every image is flagged
    return checker


def test_safety_checker_flags_and_round_trips(sd: Any, tmp_path: Path) -> None:
    import diffusers
    from transformers import CLIPImageProcessor

    components = difflux_components()
    components.update(
        safety_checker=_safety_checker(),
        requires_safety_checker=True,
        feature_extractor=CLIPImageProcessor(size={"shortest_edge": 32}, crop_size=32),
    )
    pipe = _quiet(StableDiffusionPipeline(**components))
    out = pipe(PROMPT, num_inference_steps=2, output_type="np", generator=sd.gen(0))
    assert out.nsfw_content_detected == [True]
    assert float(np.abs(out.images).max()) == 0.0
    pipe.save_pretrained(tmp_path / "saved")
    index = json.loads((tmp_path / "saved" / "model_index.json").read_text())
    assert index["safety_checker"] == ["stable_diffusion", "StableDiffusionSafetyChecker"]
    ours = DiffusionPipeline.from_pretrained(tmp_path / "saved")
    assert isinstance(ours.safety_checker, StableDiffusionSafetyChecker)
    theirs = diffusers.StableDiffusionPipeline.from_pretrained(tmp_path / "saved")
    theirs.set_progress_bar_config(disable=True)
    flagged = theirs(PROMPT, num_inference_steps=2, output_type="np", generator=sd.gen(0)).nsfw_content_detected
    assert flagged == [True]
    without = DiffusionPipeline.from_pretrained(
        tmp_path / "saved", safety_checker=None, feature_extractor=None, requires_safety_checker=False
    )
    assert without.safety_checker is None
