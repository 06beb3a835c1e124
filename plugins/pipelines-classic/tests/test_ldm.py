"""Latent Diffusion text-to-image (LDMBert) and super-resolution against Diffusers: same folder, seed, images."""

from __future__ import annotations

from typing import Any

import diffusers
import pytest
import torch

PROMPT = "a photo of a red cat"
PIXEL_TOL = 1 / 255
LATENT_TOL = 1e-4


def test_ldm_bert_matches_diffusers_and_round_trips(cl: Any, ldm_pairs: dict[str, Any], tmp_path: Any) -> None:
    from difflux_pipelines_classic import LDMBertModel
    from diffusers.pipelines.latent_diffusion.pipeline_latent_diffusion import LDMBertModel as RefBert

    ref, ours, _ = ldm_pairs["text2img"]
    assert type(ours.bert) is LDMBertModel
    ids = torch.randint(0, 100, (2, 77), generator=cl.gen(0))
    mask = torch.ones(2, 77, dtype=torch.long)
    mask[1, 30:] = 0
    assert cl.max_diff(ref.bert(ids)[0], ours.bert(ids)[0]) == 0.0
    assert cl.max_diff(ref.bert(ids, attention_mask=mask)[0], ours.bert(ids, attention_mask=mask)[0]) == 0.0
    hidden = ours.bert(ids, output_hidden_states=True).hidden_states
    assert len(hidden) == 3 and cl.max_diff(hidden[-1], ours.bert(ids)[0]) == 0.0
    ours.bert.save_pretrained(tmp_path / "bert")
    back = RefBert.from_pretrained(tmp_path / "bert")
    assert set(back.state_dict()) == set(ref.bert.state_dict())
    assert cl.max_diff(back(ids)[0], ref.bert(ids)[0]) == 0.0
    with pytest.raises(ValueError, match="exactly one"):
        ours.bert()


@pytest.mark.parametrize(
    "options",
    [{"guidance_scale": 6.0}, {"guidance_scale": 1.0, "height": 48, "width": 64}, {"guidance_scale": 0.5, "eta": 0.0}],
    ids=["guided", "unguided-48x64", "scale-below-one-guides"],
)
def test_text2img_parity(cl: Any, ldm_pairs: dict[str, Any], options: dict[str, Any]) -> None:
    ref, ours, _ = ldm_pairs["text2img"]
    kw = {"prompt": [PROMPT, "a dog"], "num_inference_steps": 3, **options}
    a = ref(**kw, generator=cl.gen(0), output_type="np").images
    b = ours(**kw, generator=cl.gen(0), output_type="np").images
    assert cl.max_diff(a, b) <= PIXEL_TOL
    latents = ours(**kw, generator=cl.gen(0), output_type="latent").images
    assert latents.shape[1:] == (4, kw.get("height", 64) // 8, kw.get("width", 64) // 8)


def test_text2img_generators_callbacks_and_save(cl: Any, ldm_pairs: dict[str, Any], tmp_path: Any) -> None:
    from difflux_pipelines_classic import LDMTextToImagePipeline

    _, ours, _ = ldm_pairs["text2img"]
    assert type(ours) is LDMTextToImagePipeline
    kw = {"num_inference_steps": 2, "guidance_scale": 3.0, "output_type": "pt"}
    both = ours([PROMPT, "a dog"], generator=[cl.gen(1), cl.gen(2)], **kw).images
    alone = ours("a dog", generator=cl.gen(2), **kw).images
    assert cl.max_diff(both[1:], alone) <= 1e-5
    seen: list[int] = []

    def count(pipe: Any, i: int, t: Any, tensors: dict[str, Any]) -> dict[str, Any]:
        seen.append(i)
        return {"latents": tensors["latents"]}

    ours(PROMPT, callback_on_step_end=count, **kw)
    assert seen == [0, 1]
    ours.save_pretrained(tmp_path / "saved")
    back = diffusers.LDMTextToImagePipeline.from_pretrained(tmp_path / "saved")
    back.set_progress_bar_config(disable=True)
    a = back(PROMPT, generator=cl.gen(3), num_inference_steps=2, output_type="np").images
    b = ours(PROMPT, generator=cl.gen(3), num_inference_steps=2, output_type="np").images
    assert cl.max_diff(a, b) <= PIXEL_TOL


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"prompt": None}, ValueError, "prompt"),
        ({"prompt": 3}, TypeError, "prompt"),
        ({"height": 60}, ValueError, "multiple of 8"),
        ({"num_inference_steps": 0}, ValueError, "num_inference_steps"),
        ({"output_type": "jpg"}, ValueError, "output_type"),
        ({"latents": torch.zeros(1, 4, 3, 3)}, ValueError, "latents"),
        ({"generator": [torch.Generator()] * 2}, ValueError, "generator"),
        ({"guidance_scale": float("nan")}, ValueError, "guidance_scale"),
    ],
    ids=["no-prompt", "prompt-type", "size", "steps", "output-type", "latents", "generators", "scale"],
)
def test_text2img_bad_input_fails_before_any_model_runs(
    ldm_pairs: dict[str, Any], monkeypatch: pytest.MonkeyPatch, kwargs: dict[str, Any], error: Any, match: str
) -> None:
    _, ours, _ = ldm_pairs["text2img"]
    calls: list[str] = []
    for name in ("bert", "unet", "vqvae"):
        monkeypatch.setattr(getattr(ours, name), "forward", lambda *a, _n=name, **k: calls.append(_n))
    with pytest.raises(error, match=match):
        ours(**{"prompt": PROMPT, "num_inference_steps": 2, **kwargs})
    assert calls == []


def test_superres_parity(cl: Any, ldm_pairs: dict[str, Any], tmp_path: Any) -> None:
    from difflux_pipelines_classic import LDMSuperResolutionPipeline

    ref, ours, _ = ldm_pairs["superres"]
    assert type(ours) is LDMSuperResolutionPipeline
    low = cl.image_input(4, 40)  # cut to 32x32 (multiples of 32)
    a = ref(low, num_inference_steps=3, generator=cl.gen(0), output_type="np").images
    b = ours(low, num_inference_steps=3, generator=cl.gen(0), output_type="np").images
    assert b.shape == (1, 128, 128, 3)
    assert cl.max_diff(a, b) <= PIXEL_TOL
    batch = torch.rand(2, 3, 16, 16, generator=cl.gen(1)) * 2 - 1
    a = ref(batch, num_inference_steps=2, generator=cl.gen(2), output_type="pt").images
    b = ours(batch, num_inference_steps=2, generator=cl.gen(2), output_type="pt").images
    assert cl.max_diff(a, b) <= PIXEL_TOL
    ours.save_pretrained(tmp_path / "sr")
    back = diffusers.LDMSuperResolutionPipeline.from_pretrained(tmp_path / "sr")
    back.set_progress_bar_config(disable=True)
    assert cl.max_diff(back(batch, num_inference_steps=2, generator=cl.gen(2), output_type="pt").images, b) <= PIXEL_TOL


@pytest.mark.parametrize(
    ("image", "kwargs", "error", "match"),
    [
        (None, {}, ValueError, "image="),
        ("a path", {}, TypeError, "PIL image or a torch.Tensor"),
        (torch.zeros(1, 4, 16, 16), {}, ValueError, r"\(batch, 3, h, w\)"),
        (torch.full((1, 3, 16, 16), float("nan")), {}, ValueError, "NaN"),
        (torch.zeros(1, 3, 16, 16), {"num_inference_steps": 0}, ValueError, "num_inference_steps"),
        (torch.zeros(1, 3, 16, 16), {"latents": torch.zeros(1, 3, 8, 8)}, ValueError, "latents"),
        (torch.zeros(1, 3, 16, 16), {"output_type": "gif"}, ValueError, "output_type"),
    ],
    ids=["missing", "type", "channels", "nan", "steps", "latents", "output-type"],
)
def test_superres_bad_input_fails_before_any_model_runs(
    ldm_pairs: dict[str, Any], monkeypatch: pytest.MonkeyPatch, image: Any, kwargs: dict[str, Any], error: Any,
    match: str,
) -> None:  # fmt: skip
    _, ours, _ = ldm_pairs["superres"]
    calls: list[str] = []
    for name in ("unet", "vqvae"):
        monkeypatch.setattr(getattr(ours, name), "forward", lambda *a, _n=name, **k: calls.append(_n))
    with pytest.raises(error, match=match):
        ours(image, **kwargs)
    assert calls == []
