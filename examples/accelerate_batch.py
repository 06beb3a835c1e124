"""Several GPUs on one box: each process of ``accelerate launch`` makes its share of the prompts.

    accelerate launch --multi_gpu --num_processes 2 examples/accelerate_batch.py --output out/

(``--multi_gpu`` picks accelerate's torchrun launcher; on a machine without GPUs the same command
starts 2 CPU processes that join over the gloo backend.)

Every process loads the pipeline on its own device (``PartialState().device``), takes its slice of
the numbered prompts with ``split_between_processes`` and writes ``out/INDEX.png``. Image ``i``
is seeded with ``seed + i`` on a CPU generator, so the files are the same whatever the number of
processes (``--check`` makes them all again in one process and compares).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from accelerate import PartialState
from difflux import DiffusionPipeline


def make(pipe: DiffusionPipeline, prompt: str, seed: int, steps: int) -> np.ndarray:
    generator = torch.Generator().manual_seed(seed)
    image = pipe(prompt, num_inference_steps=steps, generator=generator, output_type="pil").images[0]
    return np.asarray(image)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="difflux:digits-text2img")
    parser.add_argument("--output", required=True, type=Path)
    parser.add_argument("--count", type=int, default=8, help="prompts: 'a handwritten 0' ... (default 8)")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--check", action="store_true", help="main process: compare with a one-process run")
    args = parser.parse_args()

    state = PartialState(cpu=not torch.cuda.is_available())  # no GPU: processes talk over gloo
    pipe = DiffusionPipeline.from_pretrained(args.model).to(state.device)
    pipe.set_progress_bar_config(disable=True)
    jobs = [(i, f"a handwritten {i % 10}") for i in range(args.count)]
    args.output.mkdir(parents=True, exist_ok=True)
    with state.split_between_processes(jobs) as mine:
        for index, prompt in mine:
            pixels = make(pipe, prompt, args.seed + index, args.steps)
            np.save(args.output / f"{index:06d}.npy", pixels)
            print(f"process {state.process_index}/{state.num_processes} made image {index}", flush=True)
    state.wait_for_everyone()
    if state.is_main_process and args.check:
        for index, prompt in jobs:
            got = np.load(args.output / f"{index:06d}.npy")
            if not np.array_equal(got, make(pipe, prompt, args.seed + index, args.steps)):
                raise SystemExit(f"image {index} differs from a one-process run")
        print(f"all {len(jobs)} images equal a one-process run ({state.num_processes} processes)", flush=True)


if __name__ == "__main__":
    main()
