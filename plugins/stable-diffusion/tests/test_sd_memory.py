"""Memory switches on a tiny Stable Diffusion pipeline: offload strategies give the plain images,
the VAE slicing/tiling switches give what Diffusers' same switches give, and device maps place
whole components."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import difflux.offload
import pytest
import torch

PROMPT = "a photo of a cat on the red horse"
KW: dict[str, Any] = {"prompt": PROMPT, "num_inference_steps": 1, "guidance_scale": 6.0, "output_type": "np"}


@pytest.fixture(scope="module")
def reference(sd: Any, tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Path]:
    """A tiny Diffusers SD pipeline (the oracle) and the folder it saved."""
    tmp = tmp_path_factory.mktemp("sd")
    ref = sd.diffusers_pipeline(
        "StableDiffusionPipeline", sd.diffusers_sd_components(tmp), requires_safety_checker=False
    )
    ref.save_pretrained(tmp / "saved")
    return ref, tmp / "saved"


@pytest.fixture(scope="module")
def folder(reference: tuple[Any, Path]) -> Path:
    return reference[1]


@pytest.fixture(scope="module")
def plain_images(sd: Any, folder: Path) -> Any:
    return sd.load_difflux(folder)(**KW, generator=sd.gen(0)).images


STRATEGIES = {
    "model": lambda p: p.enable_model_cpu_offload(device="cpu"),
    "sequential": lambda p: p.enable_sequential_cpu_offload(device="cpu"),
    "group-block": lambda p: p.enable_group_offload("cpu", num_blocks_per_group=1),
    "group-leaf": lambda p: p.enable_group_offload("cpu", offload_type="leaf_level"),
}


def test_offloaded_pipeline_gives_the_plain_images(sd: Any, folder: Path, plain_images: Any) -> None:
    pipe = sd.load_difflux(folder)
    for name, enable in STRATEGIES.items():
        enable(pipe)
        assert pipe.device == torch.device("cpu")
        images = pipe(**KW, generator=sd.gen(0)).images
        assert sd.max_diff(images, plain_images) == 0.0, name
        pipe.remove_all_hooks()
        assert all(p.device.type == "cpu" for _, m in pipe._torch_modules() for p in m.parameters()), name


def test_model_offload_order_and_free(sd: Any, folder: Path) -> None:
    pipe = sd.load_difflux(folder)
    pipe.enable_model_cpu_offload(device="cpu")
    state = difflux.offload.active(pipe)
    assert state is not None
    handle = state.handle
    order: list[str] = []
    for name, module in pipe._torch_modules():
        def probe(m: Any, a: Any, name: str = name) -> None:
            order.append(name)
            onloaded = [n for n, w in handle.weights.items() if w.on is not None]
            assert onloaded == [name], (name, onloaded)  # exactly the running model is on the device
        inner = [m for m in module.modules() if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d))][-1]
        inner.register_forward_pre_hook(probe)
    pipe(**KW, generator=sd.gen(0))
    pipe(**KW, generator=sd.gen(0))  # the hooks re-arm after each call
    assert order[0] == "text_encoder" and order[-1] == "vae" and set(order) == {"text_encoder", "unet", "vae"}
    assert all(w.on is None for w in handle.weights.values())  # maybe_free_model_hooks ran at the end


def test_every_sd_pipeline_declares_a_valid_offload_sequence() -> None:
    import difflux_stable_diffusion as sdp

    for name in dir(sdp):
        cls = getattr(sdp, name)
        if isinstance(cls, type) and name.endswith("Pipeline") and hasattr(cls, "component_names"):
            seq = cls.model_cpu_offload_seq
            assert seq, name
            assert set(seq.split("->")) <= set(cls.component_names()), (name, seq)


@pytest.mark.parametrize("switch", ["slicing", "tiling"])
def test_vae_switches_match_diffusers(sd: Any, reference: tuple[Any, Path], switch: str) -> None:
    ref, saved = reference
    ours = sd.load_difflux(saved)
    size = 64 if switch == "tiling" else 32  # tiles of 32 pixels (the VAE's sample_size) over 64x64
    kw = {**KW, "prompt": [PROMPT, "a dog"] if switch == "slicing" else PROMPT, "height": size, "width": size}
    plain = ours(**kw, generator=sd.gen(0)).images
    getattr(ref.vae, f"enable_{switch}")()  # Diffusers 0.42 has the switch on the VAE only
    getattr(ours, f"enable_vae_{switch}")()
    assert getattr(ours.vae, f"use_{switch}") is True
    a = ref(**kw, generator=sd.gen(0)).images
    b = ours(**kw, generator=sd.gen(0)).images
    assert sd.max_diff(a, b) <= 1 / 255
    if switch == "slicing":
        assert sd.max_diff(b, plain) <= 1e-5  # slicing changes nothing but memory
    else:
        assert sd.max_diff(b, plain) > 0  # tiles really ran (seams blended differently)
    getattr(ours, f"disable_vae_{switch}")()
    getattr(ref.vae, f"disable_{switch}")()
    assert getattr(ours.vae, f"use_{switch}") is False


def test_vae_switch_without_a_vae_is_refused() -> None:
    from difflux import DiffusionPipeline

    class NoVae(DiffusionPipeline):
        def __init__(self, unet: torch.nn.Module) -> None:
            super().__init__()
            self.register_modules(unet=unet)

    with pytest.raises(AttributeError, match="has no VAE component"):
        NoVae(torch.nn.Linear(2, 2)).enable_vae_tiling()


def test_balanced_device_map_places_components(sd: Any, folder: Path, plain_images: Any, tmp_path: Path) -> None:
    pipe = sd.load_difflux(folder, device_map="balanced", max_memory={"cpu": "1GiB"})
    assert set(pipe.hf_device_map) == {"text_encoder", "unet", "vae"}
    assert set(pipe.hf_device_map.values()) == {"cpu"}
    assert sd.max_diff(pipe(**KW, generator=sd.gen(0)).images, plain_images) == 0.0
    # a budget that leaves room for the text encoder only sends the difflux models to disk
    te = sum(p.numel() * 4 for p in pipe.text_encoder.parameters())
    split = sd.load_difflux(folder, device_map="balanced", max_memory={"cpu": te + 16}, offload_folder=tmp_path)
    assert split.hf_device_map == {"text_encoder": "cpu", "unet": "disk", "vae": "disk"}
    assert split.unet.conv_in.weight.device.type == "meta"
    assert sd.max_diff(split(**KW, generator=sd.gen(0)).images, plain_images) == 0.0
