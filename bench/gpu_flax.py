"""SD1.5-size UNet step on a GPU: difflux-flax (jax.jit, CUDA jaxlib) in bf16 / fp16 against difflux PyTorch fp16.

Random weights with the SD 1.5 UNet config, batch 2 (classifier-free guidance) at 64x64 latents
(512 px), 77 text tokens. For each Flax dtype and each Flax attention kernel that is available
(``dot``, ``xla``, ``cudnn``, ``pallas-flash``, and ``auto``), one untimed call (the jit compile, reported) then
``--repeat`` timed calls; PyTorch runs its fp16 UNet with difflux's default attention backend. One
line per case: median step time, ratio flax / pytorch. Needs ``pip install -U "jax[cuda12]"``;
without a CUDA jaxlib it says so and stops.

``--tiny --device cpu`` is a smoke mode (the test-size UNet, fp32, CPU) that checks the script runs
where there is no GPU. Run on a lent H200: ``python bench/gpu_flax.py`` (about 2-3 minutes).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_flax import SD15, TINY


def _median_time(fn: Any, repeat: int, sync: Any) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="smoke mode: the test-size UNet in fp32")
    parser.add_argument("--device", default="cuda", help="cuda (default) or cpu (with --tiny)")
    parser.add_argument("--repeat", type=int, default=10)
    args = parser.parse_args()
    import jax
    import jax.numpy as jnp
    from difflux_flax import attention as fa
    from difflux_flax.unet import FlaxUNet2DConditionModel
    from difflux_models import UNet2DConditionModel

    if args.device == "cuda" and jax.default_backend() != "gpu":
        print(f"gpu_flax: JAX's backend is {jax.default_backend()!r}, not 'gpu'; pip install -U 'jax[cuda12]'")
        return
    config, side, tokens = (TINY, 16, 7) if args.tiny else (SD15, 64, 77)
    torch_dtype = torch.float32 if args.device == "cpu" else torch.float16
    flax_dtypes = [jnp.float32] if args.tiny else [jnp.bfloat16, jnp.float16]
    torch.manual_seed(0)
    torch_unet = UNet2DConditionModel(**config).eval()
    state = {k: v.numpy() for k, v in torch_unet.state_dict().items()}
    torch_unet = torch_unet.to(args.device, torch_dtype)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 4, side, side)).astype(np.float32)
    ctx = rng.standard_normal((2, tokens, int(config["cross_attention_dim"]))).astype(np.float32)
    t = np.array([500, 500])
    xt = torch.from_numpy(x).to(args.device, torch_dtype)
    ct = torch.from_numpy(ctx).to(args.device, torch_dtype)
    tt = torch.from_numpy(t).to(args.device)
    sync = torch.cuda.synchronize if args.device == "cuda" else (lambda: None)

    def torch_step() -> None:
        with torch.inference_mode():
            torch_unet(xt, tt, ct)

    torch_step()
    sync()
    torch_s = _median_time(torch_step, args.repeat, sync)
    print(f"pytorch {str(torch_dtype).removeprefix('torch.'):8s} unet step {torch_s * 1e3:8.1f} ms")
    kernels = [name for name, why in fa.available_kernels().items() if why is None and not name.startswith("test")]
    kernels.append("auto")  # per call: the available kernel of highest priority that takes the head dim
    for dtype in flax_dtypes:
        for kernel in kernels:
            unet = FlaxUNet2DConditionModel.from_config(dict(torch_unet.config), dtype=dtype, attention_kernel=kernel)
            params = unet.convert_state_dict(state)
            args_j = (jnp.asarray(x, dtype), jnp.asarray(t), jnp.asarray(ctx, dtype))
            step = jax.jit(lambda p, a, b, c, u=unet: u.apply({"params": p}, a, b, c).sample)
            start = time.perf_counter()
            try:
                step(params, *args_j).block_until_ready()
            except Exception as exc:  # a kernel that fails on this card / head size: report and go on
                print(f"flax {jnp.dtype(dtype).name:8s} {kernel:12s} failed: {type(exc).__name__}: {exc}"[:300])
                continue
            compile_s = time.perf_counter() - start
            flax_s = _median_time(lambda s=step, p=params, a=args_j: s(p, *a).block_until_ready(), args.repeat, sync)
            print(
                f"flax    {jnp.dtype(dtype).name:8s} {kernel:12s} unet step {flax_s * 1e3:8.1f} ms  "
                f"ratio flax/pytorch {flax_s / torch_s:5.2f}  (compile {compile_s:.1f} s)"
            )
            del params


if __name__ == "__main__":
    main()
