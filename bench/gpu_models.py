"""GPU benchmark: difflux vs diffusers UNet2DConditionModel (SD1.5, SDXL) and VAE decode, fp16.

Same method as ``/work/shared/anchors/diffusers_gpu_anchor.py``: random weights at the published
configs, batch 2, median of ``--iters`` forwards after 3 warm-ups; here both libraries run in the
same process on the same weights (diffusers' state dict loaded into difflux) and inputs,
interleaved, and the outputs are compared. One JSON line per measurement.

Usage::

    python bench/gpu_models.py                      # sd15 + sdxl + vae, eager
    python bench/gpu_models.py --compile            # also torch.compile (channels_last)
    python bench/gpu_models.py --tiny --device cpu  # smoke check of the code path (fp32)
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from typing import Any

import torch

SD15: dict[str, Any] = {"sample_size": 64, "cross_attention_dim": 768, "attention_head_dim": 8}
SDXL: dict[str, Any] = {
    "sample_size": 128,
    "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    "up_block_types": ("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    "block_out_channels": (320, 640, 1280),
    "layers_per_block": 2,
    "attention_head_dim": (5, 10, 20),
    "transformer_layers_per_block": (1, 2, 10),
    "cross_attention_dim": 2048,
    "use_linear_projection": True,
    "addition_embed_type": "text_time",
    "addition_time_embed_dim": 256,
    "projection_class_embeddings_input_dim": 2816,
}
TINY: dict[str, Any] = {
    "sample_size": 8,
    "block_out_channels": (32, 64),
    "layers_per_block": 1,
    "down_block_types": ("CrossAttnDownBlock2D", "DownBlock2D"),
    "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D"),
    "cross_attention_dim": 32,
    "attention_head_dim": 4,
    "norm_num_groups": 8,
}
TINY_XL: dict[str, Any] = {
    **TINY,
    "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D"),
    "up_block_types": ("CrossAttnUpBlock2D", "UpBlock2D"),
    "transformer_layers_per_block": (1, 2),
    "use_linear_projection": True,
    "addition_embed_type": "text_time",
    "addition_time_embed_dim": 8,
    "projection_class_embeddings_input_dim": 16 + 6 * 8,
}
VAE: dict[str, Any] = {
    "in_channels": 3,
    "out_channels": 3,
    "latent_channels": 4,
    "down_block_types": ("DownEncoderBlock2D",) * 4,
    "up_block_types": ("UpDecoderBlock2D",) * 4,
    "block_out_channels": (128, 256, 512, 512),
    "layers_per_block": 2,
    "norm_num_groups": 32,
}
TINY_VAE: dict[str, Any] = {**VAE, "block_out_channels": (8, 16, 16, 16), "norm_num_groups": 4, "layers_per_block": 1}


def emit(row: dict[str, Any]) -> None:
    print(json.dumps(row), flush=True)


def median_time(fn: Callable[[], Any], iters: int, sync: Callable[[], None], warmup: int = 3) -> float:
    for _ in range(warmup):
        fn()
    sync()
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    times.sort()
    return times[len(times) // 2]


def paired_models(ref_cls: Any, our_cls: Any, config: dict[str, Any], dev: str, dtype: torch.dtype) -> tuple[Any, Any]:
    """A seeded random diffusers model and a difflux model holding the very same weights."""
    torch.manual_seed(0)
    ref = ref_cls(**config).to(dev, dtype).eval()
    with torch.device("meta"):
        ours = our_cls(**config)
    missing, unexpected = ours.load_state_dict(ref.state_dict(), strict=False, assign=True)
    if missing or unexpected:
        raise SystemExit(f"state dicts differ: missing {missing[:5]}, unexpected {unexpected[:5]}")
    for name, buf in ours.named_buffers():
        if buf.device.type == "meta":
            raise SystemExit(f"buffer {name} left on the meta device")
    return ref, ours.eval()


def unet_inputs(
    config: dict[str, Any], dev: str, dtype: torch.dtype, batch: int = 2
) -> tuple[tuple[Any, ...], dict[str, Any]]:
    g = torch.Generator(device="cpu").manual_seed(0)
    s = config["sample_size"]
    x = torch.randn(batch, 4, s, s, generator=g).to(dev, dtype)
    t = torch.tensor([500] * batch, device=dev)
    ctx = torch.randn(batch, 77, config["cross_attention_dim"], generator=g).to(dev, dtype)
    kw: dict[str, Any] = {}
    if config.get("addition_embed_type") == "text_time":
        text_dim = config["projection_class_embeddings_input_dim"] - 6 * config["addition_time_embed_dim"]
        kw["added_cond_kwargs"] = {
            "text_embeds": torch.randn(batch, text_dim, generator=g).to(dev, dtype),
            "time_ids": torch.randn(batch, 6, generator=g).to(dev, dtype),
        }
    return (x, t, ctx), kw


def bench_unet(name: str, config: dict[str, Any], args: argparse.Namespace, dev: str, dtype: torch.dtype) -> None:
    from difflux.attention import resolve_attention_backend
    from difflux_models.unet_2d_condition import UNet2DConditionModel
    from diffusers import UNet2DConditionModel as DUNet
    from torch.utils.flop_counter import FlopCounterMode

    sync = torch.cuda.synchronize if dev == "cuda" else (lambda: None)
    ref, ours = paired_models(DUNet, UNet2DConditionModel, config, dev, dtype)
    pos, kw = unet_inputs(config, dev, dtype)
    q = torch.empty(2, 8, 16, 64, device=dev, dtype=dtype)
    with torch.no_grad():
        with FlopCounterMode(display=False) as fc:
            ref(*pos, **kw)
        flops = fc.get_total_flops()
        diff = (ours(*pos, **kw).sample.float() - ref(*pos, **kw).sample.float()).abs().max().item()
    params = sum(p.numel() for p in ours.parameters())
    models = {"difflux": ours, "diffusers": ref}
    ms: dict[str, float] = {}
    with torch.no_grad():
        for lib in (["difflux", "diffusers"] * args.rounds)[: 2 * args.rounds]:
            m = models[lib]
            t = median_time(lambda m=m: m(*pos, **kw), args.iters, sync) * 1e3
            ms[lib] = min(ms.get(lib, float("inf")), t)
    emit(
        {
            "model": name,
            "mode": "eager",
            "params_M": round(params / 1e6, 1),
            "batch": 2,
            "dtype": str(dtype).removeprefix("torch."),
            "gflop_per_forward": round(flops / 1e9, 1),
            "difflux_ms": round(ms["difflux"], 2),
            "diffusers_ms": round(ms["diffusers"], 2),
            "ratio": round(ms["difflux"] / ms["diffusers"], 3),
            "difflux_tflops": round(flops / (ms["difflux"] / 1e3) / 1e12, 2),
            "max_abs_diff": diff,
            "attention_backend": resolve_attention_backend(q),
        }
    )
    if args.compile:
        row: dict[str, Any] = {"model": name, "mode": f"compile{'-' + args.mode if args.mode else ''}"}
        for lib, m in models.items():
            m = m.to(memory_format=torch.channels_last)
            compiled = torch.compile(m, fullgraph=args.fullgraph, mode=args.mode)
            t0 = time.perf_counter()
            with torch.no_grad():
                compiled(*pos, **kw)
                sync()
                row[f"{lib}_compile_s"] = round(time.perf_counter() - t0, 1)
                row[f"{lib}_ms"] = round(median_time(lambda c=compiled: c(*pos, **kw), args.iters, sync) * 1e3, 2)
        row["ratio"] = round(row["difflux_ms"] / row["diffusers_ms"], 3)
        emit(row)
    del ref, ours, models
    if dev == "cuda":
        torch.cuda.empty_cache()


def bench_vae(
    config: dict[str, Any], sides: tuple[int, ...], args: argparse.Namespace, dev: str, dtype: torch.dtype
) -> None:
    from difflux_models.autoencoder_kl import AutoencoderKL
    from diffusers import AutoencoderKL as DVAE

    sync = torch.cuda.synchronize if dev == "cuda" else (lambda: None)
    ref, ours = paired_models(DVAE, AutoencoderKL, config, dev, dtype)
    for side in sides:
        z = torch.randn(1, 4, side, side, generator=torch.Generator().manual_seed(0)).to(dev, dtype)
        with torch.no_grad():
            diff = (ours.decode(z).sample.float() - ref.decode(z).sample.float()).abs().max().item()
            iters = max(5, args.iters // 4)
            a = median_time(lambda z=z: ours.decode(z), iters, sync) * 1e3
            b = median_time(lambda z=z: ref.decode(z), iters, sync) * 1e3
        emit(
            {
                "model": "vae_decode",
                "px": side * 8,
                "difflux_ms": round(a, 2),
                "diffusers_ms": round(b, 2),
                "ratio": round(a / b, 3),
                "max_abs_diff": diff,
            }
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tiny", action="store_true", help="tiny configs (smoke check)")
    ap.add_argument("--device", default=None, help="cuda (default when available) or cpu")
    ap.add_argument("--models", default="sd15,sdxl", help="comma-separated: sd15, sdxl")
    ap.add_argument("--no-vae", action="store_true")
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=1, help="alternate the libraries this many times (best kept)")
    ap.add_argument("--compile", action="store_true", help="also time torch.compile (both libraries)")
    ap.add_argument("--fullgraph", action="store_true", help="torch.compile(fullgraph=True)")
    ap.add_argument("--mode", default=None, help="torch.compile mode, e.g. reduce-overhead")
    args = ap.parse_args()

    dev = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.float16 if dev == "cuda" else torch.float32
    emit(
        {
            "device": torch.cuda.get_device_name() if dev == "cuda" else "cpu",
            "torch": torch.__version__,
            "dtype": str(dtype).removeprefix("torch."),
        }
    )
    configs = {"sd15": SD15, "sdxl": SDXL}
    tiny = {"sd15": TINY, "sdxl": TINY_XL}
    for name in [m.strip() for m in args.models.split(",") if m.strip()]:
        config = (tiny if args.tiny else configs)[name]
        bench_unet(f"{name}{'-tiny' if args.tiny else ''}", config, args, dev, dtype)
    if not args.no_vae:
        bench_vae(TINY_VAE if args.tiny else VAE, (8,) if args.tiny else (64, 128), args, dev, dtype)


if __name__ == "__main__":
    main()
