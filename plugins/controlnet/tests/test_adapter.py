"""T2IAdapter / MultiAdapter and the SD / SDXL adapter pipelines against Diffusers (the test-only oracle).

Tiny layouts with the published block types: ``full_adapter`` (SD 1.x, e.g. TencentARC/t2iadapter_*_sd15v2),
``light_adapter`` (t2iadapter_color_sd14v1) and ``full_adapter_xl`` (TencentARC/t2i-adapter-*-sdxl-1.0).
The tiny VAE downsamples by 2, so the SD adapters unshuffle by 2 and the XL one by 4.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import diffusers
import pytest
import torch
from difflux_transformers.testing import tiny_clip_text_model, tiny_clip_tokenizer

PROMPT = "a photo of a cat on the red horse"

#: SD 1.x layout scaled down: adapter features match the UNet's (CrossAttn, Down) blocks
FULL = {
    "in_channels": 3,
    "channels": [4, 8],
    "num_res_blocks": 2,
    "downscale_factor": 2,
    "adapter_type": "full_adapter",
}
#: the light layout: one more (downsampling) stage than ``channels`` has entries
LIGHT = {
    "in_channels": 3,
    "channels": [4, 8],
    "num_res_blocks": 2,
    "downscale_factor": 2,
    "adapter_type": "light_adapter",
}
#: SDXL layout scaled down: four features for (Down, CrossAttn, CrossAttn) blocks and the mid block
XL = {
    "in_channels": 3,
    "channels": [4, 8, 8, 8],
    "num_res_blocks": 2,
    "downscale_factor": 4,
    "adapter_type": "full_adapter_xl",
}


def _randomized(model: Any, seed: int) -> Any:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    return model.eval()


def ref_adapter(config: dict[str, Any], seed: int = 0, **overrides: Any) -> Any:
    torch.manual_seed(seed)
    return _randomized(diffusers.T2IAdapter(**{**config, **overrides}), seed + 50)


def sd_unet() -> Any:
    torch.manual_seed(0)
    return diffusers.UNet2DConditionModel(
        block_out_channels=(4, 8),
        layers_per_block=2,
        sample_size=16,
        in_channels=4,
        out_channels=4,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32,
        norm_num_groups=2,
        attention_head_dim=2,
    )


def xl_unet() -> Any:
    torch.manual_seed(0)
    return diffusers.UNet2DConditionModel(
        block_out_channels=(4, 8, 8),
        layers_per_block=1,
        sample_size=16,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4, 4),
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=8,
        transformer_layers_per_block=(1, 1, 2),
        projection_class_embeddings_input_dim=6 * 8 + 32,
        cross_attention_dim=64,
        norm_num_groups=2,
    )


def _scheduler(xl: bool) -> Any:
    if xl:
        return diffusers.EulerDiscreteScheduler(
            beta_start=0.00085,
            beta_end=0.012,
            beta_schedule="scaled_linear",
            timestep_spacing="leading",
            steps_offset=1,
        )
    return diffusers.DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")


@pytest.fixture(scope="module")
def adapter_pairs(tmp_path_factory: pytest.TempPathFactory, cn: Any) -> dict[str, tuple[Any, Any]]:
    """``{"sd" | "multi" | "xl": (Diffusers pipeline, the difflux one loaded from its saved folder)}``."""
    root = tmp_path_factory.mktemp("adapter-pipes")
    out = {}
    sd = {
        "vae": cn.diffusers_vae(0),
        "text_encoder": tiny_clip_text_model(0),
        "tokenizer": tiny_clip_tokenizer(root / "vocab"),
        "unet": sd_unet(),
        "scheduler": _scheduler(False),
        "safety_checker": None,
        "feature_extractor": None,
    }
    for name, adapter in (("sd", ref_adapter(FULL, 0)), ("multi", [ref_adapter(FULL, 1), ref_adapter(FULL, 2)])):
        ref = diffusers.StableDiffusionAdapterPipeline(**sd, adapter=adapter, requires_safety_checker=False)
        ref.set_progress_bar_config(disable=True)
        ref.save_pretrained(root / name)
        out[name] = (ref, cn.load_difflux(root / name))
    xl = diffusers.StableDiffusionXLAdapterPipeline(
        vae=cn.diffusers_vae(0),
        text_encoder=tiny_clip_text_model(0),
        text_encoder_2=tiny_clip_text_model(1, projection=True),
        tokenizer=tiny_clip_tokenizer(root / "vocab"),
        tokenizer_2=tiny_clip_tokenizer(root / "vocab_2"),
        unet=xl_unet(),
        adapter=ref_adapter(XL, 3),
        scheduler=_scheduler(True),
    )
    xl.set_progress_bar_config(disable=True)
    xl.save_pretrained(root / "xl")
    out["xl"] = (xl, cn.load_difflux(root / "xl"))
    return out


def _compare(ref: Any, ours: Any, cn: Any, seed: int = 0, *, latent: bool = False, **kw: Any) -> None:
    """Images within 1/255 (and, with ``latent``, the final latents within 1e-4)."""
    kw = {"prompt": PROMPT, "num_inference_steps": 3, **kw}
    kinds = (("latent", 1e-4), ("np", 1 / 255)) if latent else (("np", 1 / 255),)
    for output_type, tol in kinds:
        a = ref(**kw, generator=cn.gen(seed), output_type=output_type).images
        b = ours(**kw, generator=cn.gen(seed), output_type=output_type).images
        assert cn.max_diff(a, b) <= tol, (output_type, cn.max_diff(a, b))


# -- the model ---------------------------------------------------------------------------------


@pytest.mark.parametrize("config", [FULL, LIGHT, XL], ids=["full", "light", "full-xl"])
def test_adapter_loads_the_diffusers_layout_and_matches(tmp_path: Path, cn: Any, config: dict[str, Any]) -> None:
    from difflux_controlnet import T2IAdapter

    ref = ref_adapter(config, 7)
    ref.save_pretrained(tmp_path / "ref")
    ours = T2IAdapter.from_pretrained(tmp_path / "ref")
    x = torch.rand(2, 3, 32, 32, generator=cn.gen(1))
    with torch.no_grad():
        a, b = ref(x), ours(x)
    assert len(a) == len(b) == (len(config["channels"]) + (config["adapter_type"] == "light_adapter"))
    for fa, fb in zip(a, b, strict=True):
        assert cn.max_diff(fa, fb) <= 1e-5
    assert ours.total_downscale_factor == ref.total_downscale_factor
    assert ours.downscale_factor == ref.downscale_factor
    # and back: what difflux saves, Diffusers loads with the same keys and outputs
    ours.save_pretrained(tmp_path / "ours")
    again = diffusers.T2IAdapter.from_pretrained(tmp_path / "ours")
    assert set(again.state_dict()) == set(ours.state_dict())
    with torch.no_grad():
        assert cn.max_diff(again(x)[-1], b[-1]) <= 1e-5


def test_multi_adapter_weights_and_folders(tmp_path: Path, cn: Any) -> None:
    from difflux_controlnet import MultiAdapter, T2IAdapter

    refs = [ref_adapter(FULL, 1), ref_adapter(FULL, 2)]
    multi_ref = diffusers.MultiAdapter(refs)
    multi_ref.save_pretrained(str(tmp_path / "adapter"))
    ours = MultiAdapter.from_pretrained(tmp_path / "adapter")
    assert isinstance(ours, MultiAdapter) and ours.num_adapter == 2
    xs = [torch.rand(1, 3, 32, 32, generator=cn.gen(i)) for i in range(2)]
    with torch.no_grad():
        for weights in (None, [0.3, 1.7]):
            a, b = multi_ref(xs, weights), ours(xs, weights)
            assert max(cn.max_diff(fa, fb) for fa, fb in zip(a, b, strict=True)) <= 1e-5
    ours.save_pretrained(tmp_path / "ours")
    assert (tmp_path / "ours_1" / "config.json").is_file() and not (tmp_path / "ours_2").exists()
    back = diffusers.MultiAdapter.from_pretrained(str(tmp_path / "ours"))
    with torch.no_grad():
        assert cn.max_diff(back(xs, [0.3, 1.7])[0], ours(xs, [0.3, 1.7])[0]) <= 1e-5
    with pytest.raises(ValueError, match="at least two"):
        MultiAdapter([ours.adapters[0]])
    with pytest.raises(ValueError, match="downscales by"):
        MultiAdapter([T2IAdapter(**FULL), T2IAdapter(**{**FULL, "downscale_factor": 4})])


def test_adapter_config_errors() -> None:
    from difflux_controlnet import T2IAdapter

    with pytest.raises(ValueError, match="adapter_type must be one of"):
        T2IAdapter(**{**FULL, "adapter_type": "huge_adapter"})
    with pytest.raises(ValueError, match=r"\(batch, 3, H, W\).*multiples of 2"):
        T2IAdapter(**FULL)(torch.rand(1, 3, 31, 32))


# -- the pipelines -------------------------------------------------------------------------------


def test_loads_as_adapter_pipelines(adapter_pairs: dict[str, tuple[Any, Any]], tmp_path: Path) -> None:
    from difflux_controlnet import (
        MultiAdapter,
        StableDiffusionAdapterPipeline,
        StableDiffusionXLAdapterPipeline,
        T2IAdapter,
    )

    sd, multi, xl = (adapter_pairs[k][1] for k in ("sd", "multi", "xl"))
    assert type(sd) is StableDiffusionAdapterPipeline and isinstance(sd.adapter, T2IAdapter)
    assert isinstance(multi.adapter, MultiAdapter) and multi.adapter.num_adapter == 2
    assert type(xl) is StableDiffusionXLAdapterPipeline
    for ours, ref in ((sd, diffusers.StableDiffusionAdapterPipeline), (xl, diffusers.StableDiffusionXLAdapterPipeline)):
        assert ours.model_cpu_offload_seq == ref.model_cpu_offload_seq
        assert set(ours._optional_components) == set(ref._optional_components)
    # difflux's folder loads in Diffusers (MultiAdapter as adapter + adapter_1)
    multi.save_pretrained(tmp_path / "multi")
    index = json.loads((tmp_path / "multi" / "model_index.json").read_text())
    assert index["adapter"] == ["diffusers", "MultiAdapter"] and (tmp_path / "multi" / "adapter_1").is_dir()
    back = diffusers.StableDiffusionAdapterPipeline.from_pretrained(tmp_path / "multi")
    assert isinstance(back.adapter, diffusers.MultiAdapter) and back.adapter.num_adapter == 2


@pytest.mark.parametrize(
    "options",
    [{}, {"adapter_conditioning_scale": 0.5, "guidance_scale": 1.0}, {"negative_prompt": "blurry"}],
    ids=["cfg", "no-cfg-scale", "negative"],
)
def test_sd_adapter_parity(cn: Any, adapter_pairs: dict[str, tuple[Any, Any]], options: dict[str, Any]) -> None:
    ref, ours = adapter_pairs["sd"]
    _compare(ref, ours, cn, image=cn.image_input(1), latent=not options, **options)


def test_sd_multi_adapter_parity(cn: Any, adapter_pairs: dict[str, tuple[Any, Any]]) -> None:
    ref, ours = adapter_pairs["multi"]
    images = [cn.image_input(1), cn.image_input(2)]
    _compare(ref, ours, cn, seed=3, latent=True, image=images, adapter_conditioning_scale=[0.7, 1.3])


def test_sd_adapter_batches_and_generator_lists(cn: Any, adapter_pairs: dict[str, tuple[Any, Any]]) -> None:
    ref, ours = adapter_pairs["sd"]
    kw: dict[str, Any] = {
        "prompt": [PROMPT, "a dog"],
        "image": torch.rand(2, 3, 32, 32, generator=cn.gen(5)),  # one per prompt
        "num_inference_steps": 2,
        "output_type": "np",
    }
    a = ref(**kw, generator=[cn.gen(i) for i in range(2)]).images
    b = ours(**kw, generator=[cn.gen(i) for i in range(2)]).images
    assert b.shape == (2, 32, 32, 3) and cn.max_diff(a, b) <= 1 / 255
    # one image for two prompts, two images each (Diffusers 0.42.1 fails on this one: batch mismatch)
    kw.update(image=kw["image"][1:], num_images_per_prompt=2)
    c = ours(**kw, generator=[cn.gen(i) for i in range(4)]).images
    alone = ours(**{**kw, "prompt": "a dog", "num_images_per_prompt": 1}, generator=cn.gen(3)).images
    assert c.shape == (4, 32, 32, 3) and cn.max_diff(alone[0], c[3]) <= 1 / 255  # reproducible alone


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"adapter_conditioning_factor": 0.5, "num_inference_steps": 4},
        {"adapter_conditioning_scale": 0.6, "guidance_scale": 1.0},
    ],
    ids=["cfg", "factor", "no-cfg-scale"],
)
def test_sdxl_adapter_parity(cn: Any, adapter_pairs: dict[str, tuple[Any, Any]], options: dict[str, Any]) -> None:
    ref, ours = adapter_pairs["xl"]
    _compare(ref, ours, cn, image=cn.image_input(4), latent=not options, **options)


def test_adapter_features_change_the_output(cn: Any, adapter_pairs: dict[str, tuple[Any, Any]]) -> None:
    """Sanity for the parity above: zero scale differs from full scale (the features do reach the UNet)."""
    _, ours = adapter_pairs["sd"]
    kw: dict[str, Any] = {
        "prompt": PROMPT,
        "image": cn.image_input(1),
        "num_inference_steps": 2,
        "output_type": "latent",
    }
    on = ours(**kw, generator=cn.gen(0)).images
    off = ours(**kw, adapter_conditioning_scale=0.0, generator=cn.gen(0)).images
    assert cn.max_diff(on, off) > 1e-3


@pytest.mark.parametrize(
    ("pair", "kw", "error", "match"),
    [
        ("sd", {}, ValueError, "needs image="),
        ("sd", {"image": "cat.png"}, TypeError, "image must be a PIL image"),
        ("sd", {"adapter_conditioning_scale": [1.0, 0.5]}, ValueError, "adapter_conditioning_scale must be a finite"),
        ("sd", {"adapter_conditioning_scale": float("nan")}, ValueError, "adapter_conditioning_scale"),
        (
            "sd",
            {"adapter_conditioning_factor": 1.5},
            ValueError,
            r"adapter_conditioning_factor must be a number in \[0, 1\]",
        ),
        ("sd", {"height": 30}, ValueError, "height"),
        ("sd", {"prompt": ["a", "b"], "image": torch.rand(3, 3, 32, 32)}, ValueError, "3 condition images for 2"),
        ("sd", {"image_mode": "L"}, ValueError, "image has 1 channels but the adapter takes 3"),
        ("multi", {}, TypeError, "one condition image per adapter"),
        ("multi", {"image": ["one"]}, ValueError, "1 condition images for 2 T2I-Adapters"),
        ("multi", {"image": "two", "adapter_conditioning_scale": [1.0]}, ValueError, "list of 2 numbers"),
        ("xl", {"adapter_conditioning_factor": "half"}, ValueError, "adapter_conditioning_factor"),
        ("xl", {"width": 36}, ValueError, "width=36 is not a multiple of 8"),
    ],
)
def test_bad_input_fails_before_any_model_runs(
    cn: Any,
    adapter_pairs: dict[str, tuple[Any, Any]],
    monkeypatch: pytest.MonkeyPatch,
    pair: str,
    kw: dict[str, Any],
    error: type[Exception],
    match: str,
) -> None:
    ours = adapter_pairs[pair][1]
    image = cn.image_input(1)
    mode = kw.pop("image_mode", None)
    if mode is not None:
        kw["image"] = image.convert(mode)
    if kw.get("image") == "one":
        kw["image"] = [image]
    elif kw.get("image") == "two":
        kw["image"] = [image, image]
    kw.setdefault("image", None if not kw and pair == "sd" else image)

    def boom(*a: Any, **k: Any) -> Any:
        raise AssertionError("a model ran")

    for name in ("unet", "adapter", "text_encoder", "vae"):
        monkeypatch.setattr(getattr(ours, name), "forward", boom)
    with pytest.raises(error, match=match):
        ours(prompt=kw.pop("prompt", PROMPT), num_inference_steps=2, **kw)


def test_step_callback_and_outputs(cn: Any, adapter_pairs: dict[str, tuple[Any, Any]]) -> None:
    """callback_on_step_end sees every step and its latents replace the loop's; "pt" and tuple outputs."""
    _, ours = adapter_pairs["xl"]
    seen: list[int] = []

    def callback(pipe: Any, i: int, t: Any, tensors: dict[str, Any]) -> dict[str, Any]:
        seen.append(i)
        return {"latents": torch.zeros_like(tensors["latents"])} if i == 1 else tensors

    kw: dict[str, Any] = {"prompt": PROMPT, "image": cn.image_input(4), "num_inference_steps": 2}
    zeroed = ours(**kw, output_type="latent", callback_on_step_end=callback).images
    assert seen == [0, 1] and float(zeroed.abs().max()) == 0.0
    images = ours(**kw, output_type="pt", return_dict=False)[0]
    assert isinstance(images, torch.Tensor) and images.shape == (1, 3, 32, 32)
    with pytest.raises(ValueError, match="image"):
        ours(**kw, callback_on_step_end=callback, callback_on_step_end_tensor_inputs=["image"])
