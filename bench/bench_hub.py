"""Warm-cache ``from_pretrained`` by repo id in offline mode: difflux against Diffusers, same HF cache.

1. A tiny DDPM pipeline (UNet2DModel + DDPMScheduler) is built with Diffusers (the test-only
   oracle), served by the local test Hub (``hub/tests/hubserver.py``, on 127.0.0.1) and
   downloaded once by each library into one ``HF_HOME``.
2. A fresh interpreter with ``HF_HUB_OFFLINE=1`` times ``from_pretrained(repo_id)`` for both
   libraries, alternating, and prints the medians and the ratio (goal: difflux / diffusers <= 1.0).

When no difflux plugin registers ``DDPMPipeline`` yet, the model-level load
``UNet2DModel.from_pretrained(repo_id, subfolder="unet")`` is timed instead (and said so).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
REPO = "bench/tiny-ddpm"

TIMER = r"""
import json, statistics, sys, time, warnings
warnings.filterwarnings("ignore")
repeat, repo = int(sys.argv[1]), sys.argv[2]
import difflux, diffusers
from difflux import DiffusionPipeline
registry = difflux.get_registry()
pipeline_level = "DDPMPipeline" in registry.pipelines
if pipeline_level:
    ours = lambda: DiffusionPipeline.from_pretrained(repo)
    theirs = lambda: diffusers.DiffusionPipeline.from_pretrained(repo)
else:
    unet = registry.component_class("diffusers", "UNet2DModel")
    ours = lambda: unet.from_pretrained(repo, subfolder="unet")
    theirs = lambda: diffusers.UNet2DModel.from_pretrained(repo, subfolder="unet")
ours(); theirs()  # warm imports, page cache and lazy registries
a, b = [], []
for _ in range(repeat):
    t = time.perf_counter(); ours(); a.append(time.perf_counter() - t)
    t = time.perf_counter(); theirs(); b.append(time.perf_counter() - t)
print(json.dumps({"level": "pipeline" if pipeline_level else "model (UNet2DModel, subfolder='unet')",
                  "difflux": statistics.median(a), "diffusers": statistics.median(b)}))
"""


def build_repo(folder: Path) -> None:
    import diffusers
    import torch

    torch.manual_seed(0)
    unet = diffusers.UNet2DModel(
        sample_size=8,
        in_channels=3,
        out_channels=3,
        layers_per_block=1,
        block_out_channels=(8, 16),
        norm_num_groups=4,
        down_block_types=("DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D"),
    )
    diffusers.DDPMPipeline(unet=unet, scheduler=diffusers.DDPMScheduler(num_train_timesteps=50)).save_pretrained(folder)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeat", type=int, default=15)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="difflux-bench-hub-") as tmp:
        home = Path(tmp) / "hf_home"
        sys.path.insert(0, str(ROOT / "hub" / "tests"))
        from hubserver import LocalHub

        with LocalHub() as hub:
            env = {
                **os.environ,
                "HF_HOME": str(home),
                "HF_HUB_CACHE": str(home / "hub"),
                "HF_ENDPOINT": hub.url,
                "HF_HUB_DISABLE_TELEMETRY": "1",
                "HF_HUB_DISABLE_PROGRESS_BARS": "1",
                "HF_HUB_DISABLE_XET": "1",
                "NO_PROXY": "127.0.0.1",
            }
            env.pop("HF_HUB_OFFLINE", None)
            build_repo(Path(tmp) / "repo")
            hub.upload_folder(REPO, Path(tmp) / "repo")
            populate = (
                "import sys, difflux, diffusers; from difflux import DiffusionPipeline; repo = sys.argv[1]; "
                "r = difflux.get_registry(); "
                "DiffusionPipeline.download(repo); diffusers.DiffusionPipeline.download(repo)"
            )
            subprocess.run([sys.executable, "-c", populate, REPO], env=env, check=True, capture_output=True)
        offline = {**env, "HF_HUB_OFFLINE": "1", "HF_ENDPOINT": "http://127.0.0.1:9"}  # nothing listens there
        out = subprocess.run(
            [sys.executable, "-c", TIMER, str(args.repeat), REPO],
            env=offline,
            check=True,
            capture_output=True,
            text=True,
        )
        result = json.loads(out.stdout.strip().splitlines()[-1])
    ratio = result["difflux"] / result["diffusers"]
    print(f"warm-cache offline from_pretrained({REPO!r}), {result['level']}-level, median of {args.repeat}:")
    print(f"  difflux   {result['difflux'] * 1000:8.2f} ms")
    print(f"  diffusers {result['diffusers'] * 1000:8.2f} ms")
    print(f"  ratio difflux/diffusers = {ratio:.2f} (goal <= 1.0)")


if __name__ == "__main__":
    main()
