"""DeepFloyd IF, difflux against Diffusers in the same run (CPU, fp32).

``--case tiny``: the tiny stage-I ``IFPipeline`` of the plugin's tests (Diffusers builds and saves it, both
libraries load the same folder), ``--steps`` (20) steps at 32x32 with guidance, timed over ``--repeat`` calls after a
warm-up, alternating between the libraries; medians compared (goal: difflux / diffusers <= 0.9).

``--case unet``: a stage-I UNet at IF-I-XL's published size (4.3 B parameters): IF's layout (a resnet-only
first level, then simple cross-attention levels with 64-wide heads, 3 resnets per block, scale-shift time
norm, GELU, attention-pooled text embedding of 4096-wide T5-XXL states) at 704/1408/2112/2816 channels with
2816-wide projected text states. :data:`PUBLISHED_UNET` is a reconstruction: the Hub's unet/config.json cannot
be read offline, and these widths are the ones at which IF's layout has the model card's 4.3 B parameters
(it builds 4.305 B; IF's 512-wide base gives 2.3 B). One copy of random weights is shared by both libraries
(about 17 GiB in fp32); one step on batch 2 (guidance) at 64x64 (goal <= 1.0). When the machine has less
memory available the case says so and is skipped.
Run: ``python bench/bench_deepfloyd_if.py [--case tiny|unet|all]``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "plugins" / "deepfloyd-if"))

#: a stage-I UNet at IF-I-XL's published size: IF's block and embedding types; widths reconstructed from the
#: model card's 4.3 B parameters (see the module docstring)
PUBLISHED_UNET: dict[str, Any] = {
    "sample_size": 64,
    "in_channels": 3,
    "out_channels": 6,
    "layers_per_block": 3,
    "block_out_channels": (704, 1408, 2112, 2816),
    "down_block_types": (
        "ResnetDownsampleBlock2D",
        "SimpleCrossAttnDownBlock2D",
        "SimpleCrossAttnDownBlock2D",
        "SimpleCrossAttnDownBlock2D",
    ),
    "mid_block_type": "UNetMidBlock2DSimpleCrossAttn",
    "up_block_types": (
        "SimpleCrossAttnUpBlock2D",
        "SimpleCrossAttnUpBlock2D",
        "SimpleCrossAttnUpBlock2D",
        "ResnetUpsampleBlock2D",
    ),
    "cross_attention_dim": 2816,
    "encoder_hid_dim": 4096,
    "attention_head_dim": 64,
    "addition_embed_type": "text",
    "addition_embed_type_num_heads": 64,
    "cross_attention_norm": "group_norm",
    "resnet_time_scale_shift": "scale_shift",
    "act_fn": "gelu",
}


def alternate(ours: Any, theirs: Any, kwargs: dict[str, Any], repeat: int) -> tuple[float, float]:
    for pipe in (ours, theirs):
        pipe(**kwargs, generator=torch.Generator().manual_seed(0))  # warm-up
    t_ours, t_theirs = [], []
    for _ in range(repeat):
        for pipe, times in ((ours, t_ours), (theirs, t_theirs)):
            start = time.perf_counter()
            pipe(**kwargs, generator=torch.Generator().manual_seed(0))
            times.append(time.perf_counter() - start)
    return statistics.median(t_ours), statistics.median(t_theirs)


def bench_tiny(repeat: int, steps: int) -> None:
    import difflux
    import diffusers
    from difflux_transformers.testing import tiny_t5_encoder, tiny_t5_tokenizer
    from tests.conftest import UNET, _schedulers

    with tempfile.TemporaryDirectory() as tmp:
        torch.manual_seed(0)
        unet = diffusers.UNet2DConditionModel(**UNET).eval()
        scheduler, _ = _schedulers()
        diffusers.IFPipeline(
            tokenizer=tiny_t5_tokenizer(Path(tmp) / "tok"),
            text_encoder=tiny_t5_encoder(seed=2),
            unet=unet,
            scheduler=scheduler,
            safety_checker=None,
            feature_extractor=None,
            watermarker=None,
            requires_safety_checker=False,
        ).save_pretrained(Path(tmp) / "if")
        ours = difflux.DiffusionPipeline.from_pretrained(Path(tmp) / "if")
        theirs = diffusers.DiffusionPipeline.from_pretrained(Path(tmp) / "if")
        for pipe in (ours, theirs):
            pipe.set_progress_bar_config(disable=True)
        kwargs = {"prompt": "a red cat", "num_inference_steps": steps, "output_type": "pt", "clean_caption": False}
        a = ours(**kwargs, generator=torch.Generator().manual_seed(0)).images
        b = theirs(**kwargs, generator=torch.Generator().manual_seed(0)).images
        diff = float((a - b).abs().max())
        t_ours, t_theirs = alternate(ours, theirs, kwargs, repeat)
    print(f"IFPipeline tiny, {steps} steps, 32x32, guidance, CPU fp32 (median of {repeat})")
    print(
        f"  diffusers {t_theirs:8.3f} s    difflux {t_ours:8.3f} s    ratio difflux/diffusers "
        f"{t_ours / t_theirs:.2f} (goal <= 0.9)   max |diff| {diff:.2e}"
    )


def available_bytes() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    return 0


def bench_unet(repeat: int) -> None:
    import diffusers
    from difflux_models import UNet2DConditionModel

    with torch.device("meta"):
        probe = UNet2DConditionModel(**PUBLISHED_UNET)
    params = sum(p.numel() for p in probe.parameters())
    need, have = 4 * params * 1.15, available_bytes()  # one shared fp32 copy, plus activations
    print(f"IF-I-XL stage-I UNet, published size ({params / 1e9:.2f} B parameters), one step, batch 2, 64x64, fp32")
    if need > have:
        print(
            f"  skipped: one fp32 copy and its activations need about {need / 2**30:.0f} GiB, "
            f"{have / 2**30:.0f} GiB available"
        )
        return
    torch.manual_seed(0)
    theirs = diffusers.UNet2DConditionModel(**PUBLISHED_UNET).eval()
    with torch.device("meta"):
        ours = UNet2DConditionModel(**PUBLISHED_UNET)
    ours.load_state_dict(theirs.state_dict(), assign=True)
    ours.eval()
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 64, 64, generator=g)
    states = torch.randn(2, 77, 4096, generator=g)
    t = torch.tensor(500)

    def step(model: Any) -> torch.Tensor:
        with torch.inference_mode():
            out: torch.Tensor = model(x, t, encoder_hidden_states=states, return_dict=False)[0]
        return out

    diff = float((step(ours) - step(theirs)).abs().max())
    t_ours, t_theirs = [], []
    for _ in range(repeat):
        for model, times in ((ours, t_ours), (theirs, t_theirs)):
            start = time.perf_counter()
            step(model)
            times.append(time.perf_counter() - start)
    a, b = statistics.median(t_ours), statistics.median(t_theirs)
    print(
        f"  diffusers {b:8.2f} s    difflux {a:8.2f} s    ratio difflux/diffusers {a / b:.2f} (goal <= 1.0)   "
        f"max |noise pred diff| {diff:.2e}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--case", choices=("tiny", "unet", "all"), default="all")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--steps", type=int, default=20, help="denoising steps of the tiny pipeline")
    args = parser.parse_args()
    torch.set_grad_enabled(False)
    if args.case in ("tiny", "all"):
        bench_tiny(args.repeat, args.steps)
    if args.case in ("unet", "all"):
        bench_unet(max(1, args.repeat // 2))


if __name__ == "__main__":
    main()
