"""One UNet denoising step, difflux-flax (jax.jit) against difflux's PyTorch UNet in the same run (CPU, fp32).

Diffusers is not the reference here: it dropped its Flax support (0.40), so the ratio is Flax over
difflux PyTorch on the same weights and inputs. ``--case tiny``: the test-size UNet (two blocks,
8/16 channels) on batch 2 at 16x16 latents; ``--case sd15``: the SD 1.5 UNet config (860M
parameters, random weights) on batch 2 (classifier-free guidance) at 64x64 latents with 77 text
tokens. Each side runs one untimed warm-up (Flax: the jit compile, reported separately), then
``--repeat`` timed calls alternating between the two frameworks; medians are compared
(flax / pytorch). The outputs are checked against each other first (max abs difference).
Run: ``python bench/bench_flax.py`` (``--sd15-side 32`` halves the latent side: on a busy 2-core machine the
SD 1.5 case at 64x64 takes longer than 20 minutes, its XLA compile alone about 2 minutes).
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

import numpy as np
import torch

TINY: dict[str, Any] = {
    "block_out_channels": (8, 16),
    "layers_per_block": 1,
    "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D"),
    "up_block_types": ("CrossAttnUpBlock2D", "UpBlock2D"),
    "cross_attention_dim": 32,
    "norm_num_groups": 4,
    "attention_head_dim": 2,
    "sample_size": 16,
}
SD15: dict[str, Any] = {"cross_attention_dim": 768, "attention_head_dim": 8, "sample_size": 64}


def run_case(name: str, config: dict[str, Any], side: int, tokens: int, repeat: int) -> dict[str, float]:
    import jax
    import jax.numpy as jnp
    from difflux_flax.unet import FlaxUNet2DConditionModel
    from difflux_models import UNet2DConditionModel

    torch.manual_seed(0)
    torch_unet = UNet2DConditionModel(**config).eval()  # random weights; the Flax side converts the same tensors
    flax_unet = FlaxUNet2DConditionModel.from_config(dict(torch_unet.config))
    params = flax_unet.convert_state_dict({k: v.numpy() for k, v in torch_unet.state_dict().items()})
    dim = int(config.get("cross_attention_dim", 1280))
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 4, side, side)).astype(np.float32)
    ctx = rng.standard_normal((2, tokens, dim)).astype(np.float32)
    t = np.array([500, 500])
    step = jax.jit(lambda p, a, b, c: flax_unet.apply({"params": p}, a, b, c).sample)
    xj, tj, cj = jnp.asarray(x), jnp.asarray(t), jnp.asarray(ctx)
    start = time.perf_counter()
    got = np.asarray(step(params, xj, tj, cj).block_until_ready())
    compile_s = time.perf_counter() - start
    xt, tt, ct = torch.from_numpy(x), torch.from_numpy(t), torch.from_numpy(ctx)
    with torch.inference_mode():
        ref = torch_unet(xt, tt, ct).sample.numpy()
    diff = float(np.abs(got - ref).max())
    flax_times, torch_times = [], []
    for _ in range(repeat):
        start = time.perf_counter()
        step(params, xj, tj, cj).block_until_ready()
        flax_times.append(time.perf_counter() - start)
        start = time.perf_counter()
        with torch.inference_mode():
            torch_unet(xt, tt, ct)
        torch_times.append(time.perf_counter() - start)
    f, p = statistics.median(flax_times), statistics.median(torch_times)
    print(
        f"{name:5s} {side}x{side} latents, batch 2, unet step: flax-jit {f * 1e3:9.1f} ms  "
        f"pytorch {p * 1e3:9.1f} ms  ratio flax/pytorch {f / p:5.2f}  "
        f"(jit compile {compile_s:.1f} s, max |diff| {diff:.2e}, {repeat} calls each)"
    )
    return {"flax_s": f, "torch_s": p, "ratio": f / p, "compile_s": compile_s, "max_diff": diff}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--case", choices=("tiny", "sd15", "all"), default="all")
    parser.add_argument("--repeat", type=int, default=0, help="timed calls per framework (default 20 tiny, 3 sd15)")
    parser.add_argument("--sd15-side", type=int, default=64, help="latent side of the sd15 case (64: 512 px)")
    args = parser.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    if args.case in ("tiny", "all"):
        run_case("tiny", TINY, 16, 7, args.repeat or 20)
    if args.case in ("sd15", "all"):
        run_case("sd15", SD15, args.sd15_side, 77, args.repeat or 3)


if __name__ == "__main__":
    main()
