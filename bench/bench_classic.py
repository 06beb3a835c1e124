"""The classic pipelines end to end, difflux against Diffusers in the same run (CPU, fp32, tiny random models).

Cases: LDM text-to-image (10 DDIM steps, guidance, 64x64), LDM super-resolution (10 DDIM steps,
32 -> 128 px), VQ-Diffusion (10 steps, learned classifier-free embeddings; Diffusers' pipeline in
memory from the same weights, difflux from the folder Diffusers saved), value-guided planning
(toy environment, 10 timesteps x 2 guide steps, 16 plans of horizon 16). Medians of ``--repeat``
alternating calls after one warm-up, one torch thread by default (tiny models: thread scheduling on a
shared machine would dominate) (goal: difflux / diffusers <= 0.9).

Run: ``python bench/bench_classic.py``.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

_HERE = Path(__file__).resolve().parent
_ROOT = _HERE.parent


def _load(name: str, path: Path) -> Any:
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ImportError(path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: tiny models, load-insensitive)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    # the tiny builders of the plugin's tests (Diffusers-side layouts) and the alternating timer of bench_pixart
    fixtures = _load("classic_fixtures", _ROOT / "plugins/pipelines-classic/tests/conftest.py")
    alternate = _load("bench_pixart", _HERE / "bench_pixart.py").alternate
    from difflux_stable_diffusion.testing import load_difflux

    gen = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    ratios = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        cases: list[tuple[str, Any, Any, dict[str, Any]]] = []
        ref = fixtures.diffusers_ldm_text2img(root / "tok")
        ref.save_pretrained(root / "t2i")
        kw = {"prompt": "a photo of a red cat", "num_inference_steps": 10, "guidance_scale": 3.0, "output_type": "np"}
        cases.append(("LDM text-to-image", ref, load_difflux(root / "t2i"), kw))
        ref = fixtures.diffusers_ldm_superres()
        ref.save_pretrained(root / "sr")
        low = torch.rand(1, 3, 32, 32, generator=gen()) * 2 - 1
        cases.append(("LDM super-resolution", ref, load_difflux(root / "sr"),
                      {"image": low, "num_inference_steps": 10, "output_type": "np"}))  # fmt: skip
        ref = fixtures.diffusers_vq_diffusion(root / "vqtok", True)
        ref.save_pretrained(root / "vq")
        cases.append(("VQ-Diffusion", ref, load_difflux(root / "vq"),
                      {"prompt": "a photo of a red cat", "num_inference_steps": 10, "output_type": "np"}))  # fmt: skip
        for name, ref, ours, kw in cases:
            ref.set_progress_bar_config(disable=True)
            diff = float(np.abs(ref(**kw, generator=gen()).images - ours(**kw, generator=gen()).images).max())
            calls = {
                "diffusers": lambda r=ref, k=kw: r(**k, generator=gen()),
                "difflux": lambda o=ours, k=kw: o(**k, generator=gen()),
            }
            medians = alternate(calls, args.repeat)
            ratios[name] = medians["difflux"] / medians["diffusers"]
            print(f"{name}: diffusers {medians['diffusers'] * 1e3:.1f} ms, difflux {medians['difflux'] * 1e3:.1f} ms, "
                  f"ratio {ratios[name]:.2f}; max |diff| {diff:.2e}")  # fmt: skip
        env = fixtures.ToyEnv()
        ref = fixtures.diffusers_value_guided(env)
        ref.set_progress_bar_config(disable=True)
        ref.save_pretrained(root / "rl")
        ours = load_difflux(root / "rl", env=env)
        obs = np.zeros(4, dtype=np.float32)

        def plan(pipe: Any) -> Any:
            torch.manual_seed(0)
            return pipe(obs, batch_size=16, planning_horizon=16)

        diff = float(np.abs(plan(ref) - plan(ours)).max())
        medians = alternate({"diffusers": lambda: plan(ref), "difflux": lambda: plan(ours)}, args.repeat)
        ratio = ratios["value-guided planning"] = medians["difflux"] / medians["diffusers"]
        print(f"value-guided planning: diffusers {medians['diffusers'] * 1e3:.1f} ms, difflux "
              f"{medians['difflux'] * 1e3:.1f} ms, ratio {ratio:.2f}; max |diff| {diff:.2e}")  # fmt: skip
    print("goal: every ratio <= 0.9;", ", ".join(f"{k} {v:.2f}" for k, v in ratios.items()))


if __name__ == "__main__":
    main()
