"""PixArt-alpha / -sigma pipelines against Diffusers: same folder, same seed, same images."""

from __future__ import annotations

import logging
from typing import Any

import diffusers
import pytest
import torch

PROMPT = "A photo of a red cat"
PIXEL_TOL = 1 / 255
LATENT_TOL = 1e-4
SMALL = {"height": 64, "width": 64, "use_resolution_binning": False, "num_inference_steps": 2}


def _compare(px: Any, ref: Any, ours: Any, seed: int = 0, *, latent: bool = True, **kw: Any) -> None:
    """Final latents within 1e-4 (``latent``) and images within 1/255."""
    kw = {"prompt": PROMPT, **SMALL, **kw}
    kinds = (("latent", LATENT_TOL), ("np", PIXEL_TOL)) if latent else (("np", PIXEL_TOL),)
    for output_type, tol in kinds:
        a = ref(**kw, generator=px.gen(seed), output_type=output_type).images
        b = ours(**kw, generator=px.gen(seed), output_type=output_type).images
        assert px.max_diff(a, b) <= tol, (output_type, px.max_diff(a, b))


def test_loads_published_layouts(pixart_pairs: dict[str, Any]) -> None:
    from difflux_models.transformers import PixArtTransformer2DModel
    from difflux_pixart import PixArtAlphaPipeline, PixArtSigmaPipeline
    from transformers import T5EncoderModel

    for layout, cls in (("alpha", PixArtAlphaPipeline), ("alpha_1024", PixArtAlphaPipeline),
                        ("sigma", PixArtSigmaPipeline)):  # fmt: skip
        ours = pixart_pairs[layout][1]
        assert type(ours) is cls
        assert type(ours.transformer) is PixArtTransformer2DModel
        assert isinstance(ours.text_encoder, T5EncoderModel)
        assert type(ours.scheduler).__name__ == "DPMSolverMultistepScheduler"
    assert pixart_pairs["alpha_1024"][1].transformer.use_additional_conditions is True
    assert pixart_pairs["sigma"][1].transformer.use_additional_conditions is False
    assert PixArtAlphaPipeline.model_cpu_offload_seq == diffusers.PixArtAlphaPipeline.model_cpu_offload_seq
    assert set(PixArtSigmaPipeline._optional_components) == set(diffusers.PixArtSigmaPipeline._optional_components)


@pytest.mark.parametrize(
    ("layout", "options"),
    [
        ("alpha", {}),
        ("alpha", {"guidance_scale": 1.0, "negative_prompt": "blurry"}),
        ("alpha_1024", {"num_inference_steps": 3, "height": 48, "width": 64}),
        ("sigma", {"negative_prompt": "low quality", "max_sequence_length": 12}),
    ],
    ids=["alpha-cfg", "alpha-no-cfg", "alpha-1024-micro-conditions", "sigma"],
)
def test_parity(px: Any, pixart_pairs: dict[str, Any], layout: str, options: dict[str, Any]) -> None:
    ref, ours, _ = pixart_pairs[layout]
    _compare(px, ref, ours, **options)


def test_resolution_binning_parity(px: Any, pixart_pairs: dict[str, Any]) -> None:
    """A 64x128 request runs at the 176x352 bucket of the 256 px table and is resized back."""
    for layout in ("alpha", "sigma"):
        ref, ours, _ = pixart_pairs[layout]
        kw = {"height": 64, "width": 128, "use_resolution_binning": True, "num_inference_steps": 2}
        a = ref(prompt=PROMPT, **kw, generator=px.gen(1), output_type="np").images
        b = ours(prompt=PROMPT, **kw, generator=px.gen(1), output_type="np").images
        assert b.shape == (1, 64, 128, 3)
        assert px.max_diff(a, b) <= PIXEL_TOL
        latents = ours(prompt=PROMPT, **kw, generator=px.gen(1), output_type="latent").images
        assert tuple(latents.shape) == (1, 4, 176 // 8, 352 // 8)


def test_batches_and_generator_lists(px: Any, pixart_pairs: dict[str, Any]) -> None:
    ref, ours, _ = pixart_pairs["alpha"]
    kw: dict[str, Any] = {"prompt": [PROMPT, "a dog"], "num_images_per_prompt": 2, **SMALL, "output_type": "np"}
    a = ref(**kw, generator=[px.gen(i) for i in range(4)]).images
    b = ours(**kw, generator=[px.gen(i) for i in range(4)]).images
    assert px.max_diff(a, b) <= PIXEL_TOL
    alone = ours(prompt="a dog", **SMALL, output_type="np", generator=px.gen(3)).images
    assert px.max_diff(alone[0], b[3]) <= 1e-5  # one image per generator, reproducible alone


def test_prompt_embeds_and_masks(px: Any, pixart_pairs: dict[str, Any]) -> None:
    """Embeddings encoded once give the prompt's images; passed with their masks, as in Diffusers."""
    ref, ours, _ = pixart_pairs["alpha"]
    embeds, mask, neg, neg_mask = ref.encode_prompt(PROMPT, do_classifier_free_guidance=True, clean_caption=False)
    kw = {"prompt_embeds": embeds, "prompt_attention_mask": mask, "negative_prompt_embeds": neg,
          "negative_prompt_attention_mask": neg_mask, "negative_prompt": None, **SMALL,
          "output_type": "np"}  # fmt: skip
    a = ref(**kw, generator=px.gen(2)).images
    b = ours(**kw, generator=px.gen(2)).images
    c = ours(prompt=PROMPT, **SMALL, output_type="np", generator=px.gen(2)).images
    assert px.max_diff(a, b) <= PIXEL_TOL
    assert px.max_diff(b, c) <= 1e-5


def test_ddim_and_one_step_take_the_clean_sample(px: Any, pixart_pairs: dict[str, Any], tmp_path: Any) -> None:
    """Other schedulers load by keyword; one DDIM step returns the predicted clean sample as Diffusers does."""
    from difflux_schedulers import DDIMScheduler

    ref, _, folder = pixart_pairs["alpha"]
    ddim_ref = diffusers.PixArtAlphaPipeline(**{**ref.components, "scheduler": diffusers.DDIMScheduler()})
    ddim_ref.set_progress_bar_config(disable=True)
    ddim = px.load_difflux(folder, scheduler=DDIMScheduler())
    for steps in (1, 3):
        _compare(px, ddim_ref, ddim, num_inference_steps=steps)


def test_step_callbacks(pixart_pairs: dict[str, Any]) -> None:
    """``callback_on_step_end`` sees each step's latents and its replacement is used; guidance can be turned off."""
    _, ours, _ = pixart_pairs["alpha"]
    seen: list[int] = []

    def stop_guiding(pipe: Any, i: int, t: Any, tensors: dict[str, Any]) -> dict[str, Any]:
        seen.append(i)
        pipe._guidance_scale = 0.0
        return {"latents": tensors["latents"] * 0}

    out = ours(PROMPT, **SMALL, output_type="latent", generator=torch.Generator().manual_seed(0),
               callback_on_step_end=stop_guiding).images  # fmt: skip
    assert seen == [0, 1]
    assert out.shape == (1, 4, 8, 8) and torch.isfinite(out).all()
    legacy: list[int] = []
    with pytest.warns(FutureWarning):
        ours(PROMPT, **SMALL, output_type="latent", callback=lambda i, t, x: legacy.append(i), callback_steps=1)
    assert legacy == [0, 1]


def test_save_loads_in_diffusers(px: Any, pixart_pairs: dict[str, Any], tmp_path: Any) -> None:
    _, ours, _ = pixart_pairs["sigma"]
    ours.save_pretrained(tmp_path / "saved")
    back = diffusers.PixArtSigmaPipeline.from_pretrained(tmp_path / "saved")
    back.set_progress_bar_config(disable=True)
    _compare(px, back, ours, seed=5, latent=False)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"prompt": None}, ValueError, "prompt"),
        ({"prompt_embeds": torch.zeros(1, 4, 32)}, ValueError, "prompt or prompt_embeds"),
        ({"prompt": None, "prompt_embeds": torch.zeros(1, 4, 32)}, ValueError, "prompt_attention_mask"),
        ({"prompt": None, "prompt_embeds": torch.zeros(1, 4, 32), "prompt_attention_mask": torch.ones(1, 5)},
         ValueError, "shaped"),
        ({"max_sequence_length": 0}, ValueError, "max_sequence_length"),
        ({"clean_caption": "yes"}, TypeError, "clean_caption"),
        ({"height": 60}, ValueError, "multiple of 8"),
        ({"output_type": "jpeg"}, ValueError, "output_type"),
        ({"num_inference_steps": 0}, ValueError, "num_inference_steps"),
        ({"generator": [torch.Generator()] * 3}, ValueError, "generator"),
        ({"latents": torch.zeros(1, 4, 7, 8)}, ValueError, "latents"),
        ({"callback_on_step_end_tensor_inputs": ["nope"], "callback_on_step_end": lambda *a: {}},
         ValueError, "nope"),
    ],
    ids=["no-prompt", "both", "embeds-no-mask", "mask-shape", "max-seq", "clean-caption", "size",
         "output-type", "steps", "generators", "latents", "callback-names"],
)  # fmt: skip
def test_bad_input_fails_before_any_model_runs(
    pixart_pairs: dict[str, Any], monkeypatch: pytest.MonkeyPatch, kwargs: dict[str, Any], error: Any, match: Any
) -> None:
    _, ours, _ = pixart_pairs["alpha_1024"]
    calls: list[str] = []
    for name in ("text_encoder", "transformer", "vae"):
        module = getattr(ours, name)
        monkeypatch.setattr(module, "forward", lambda *a, _n=name, **k: calls.append(_n))
    with pytest.raises(error, match=match):
        ours(**{"prompt": PROMPT, **SMALL, **kwargs})
    assert calls == []


def test_clean_caption_warns_without_its_packages(
    pixart_pairs: dict[str, Any], monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from difflux_pixart import captions

    _, ours, _ = pixart_pairs["alpha"]
    monkeypatch.setattr(captions, "caption_cleaning_available", lambda: False)
    caplog.set_level(logging.WARNING, logger="difflux")
    with_clean = ours(" A Photo ", **SMALL, output_type="latent", generator=torch.Generator().manual_seed(0)).images
    assert "beautifulsoup4 and ftfy" in caplog.text
    plain = ours("a photo", **SMALL, clean_caption=False, output_type="latent",
                 generator=torch.Generator().manual_seed(0)).images  # fmt: skip
    assert torch.equal(with_clean, plain)  # lower-cased and stripped only
