"""Quality of the embedded models, per sampler: a PNG grid (sampler x digit) and a table of accuracies.

For each embedded model (the class-conditional ``difflux:digits`` and the text-to-image
``difflux:digits-text2img``), each registered sampler alias its scheduler can be swapped for (web-UI
names: "DDIM", "DPM++ 2M Karras", "Euler a", ...) and each seed, it draws one image of each digit
0..9 (class labels, or the prompts "a handwritten zero" ... "a handwritten nine") at the CLI's
default step count, and asks a classifier fitted on scikit-learn's digits which digit each image
shows (:mod:`difflux.testing.digits`). Aliases naming the same sampler run once.

It writes, into ``--out`` (default ``quality/`` in the current directory):

* ``<model>-grid.png``: one row per sampler, one column per digit, the first seed; a red tile is one
  the classifier reads as another digit;
* ``<model>-accuracy.md``: per sampler, the accuracy over all seeds and the digits it missed.

Not a test: ``tests/test_embedded_quality.py`` asserts the thresholds. Usage::

    python bench/quality.py                          # both models, every sampler, seeds 0 1 2
    python bench/quality.py --models digits --seeds 1 --samplers DDIM "DPM++ 2S a"

This bench measures difflux alone (there is no Diffusers counterpart of "how good are the digits").
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import torch
from difflux import DiffusionPipeline
from difflux.cli import EMBEDDED_MODELS
from difflux.testing.digits import predict_digits, sample_digits, sampler_aliases, with_sampler

MODELS = {"digits": "difflux:digits", "text2img": "difflux:digits-text2img"}


def sweep(model: str, samplers: list[str] | None, seeds: list[int]) -> list[dict[str, Any]]:
    """One row per sampler alias: accuracy over ``seeds``, the misses, the first seed's images and labels."""
    pipe = DiffusionPipeline.from_pretrained(model)
    pipe.set_progress_bar_config(disable=True)
    steps = EMBEDDED_MODELS[model][1]
    aliases = sampler_aliases(pipe)
    config = pipe.scheduler.config  # each sampler starts from the model's own scheduler config
    done: dict[str, dict[str, Any]] = {}
    rows = []
    for alias in samplers or list(aliases):
        same = aliases.get(alias, alias)
        if same not in done:
            with_sampler(pipe, same, config)
            start = time.perf_counter()
            hits, total, misses, first = 0, 0, [], None
            for seed in seeds:
                images, wanted = sample_digits(pipe, seed, steps)
                predicted = predict_digits(images)
                ok = predicted == wanted.numpy()
                hits, total = hits + int(ok.sum()), total + len(ok)
                misses += [f"{w}->{p} (seed {seed})" for w, p, k in zip(wanted.tolist(), predicted, ok) if not k]
                if first is None:
                    first = (images, ok)
            took = (time.perf_counter() - start) / len(seeds)
            done[same] = {"accuracy": hits / total, "misses": misses, "first": first, "seconds": took}
        rows.append({"sampler": alias, **done[same]})
    return rows


def grid(rows: list[dict[str, Any]], tile: int = 32) -> Any:
    """The first seed's digits: one row per sampler, misread tiles tinted red."""
    import PIL.Image

    out = PIL.Image.new("RGB", (10 * tile, len(rows) * tile), "white")
    for r, row in enumerate(rows):
        images, ok = row["first"]
        for c in range(10):
            grey = (images[c].float().mean(0).clamp(0, 1) * 255).byte().numpy()
            image = PIL.Image.fromarray(grey, "L").resize((tile, tile), PIL.Image.Resampling.NEAREST).convert("RGB")
            if not ok[c]:
                red = PIL.Image.new("RGB", image.size, (255, 0, 0))
                image = PIL.Image.blend(image, red, 0.4)
            out.paste(image, (c * tile, r * tile))
    return out


def table(model: str, rows: list[dict[str, Any]], seeds: list[int]) -> str:
    lines = [
        f"# {model}: share of digits the classifier reads as asked (seeds {', '.join(map(str, seeds))})",
        "",
        "| sampler | accuracy | s per 10 digits | misread (asked->read) |",
        "|---|---|---|---|",
    ]
    for row in rows:
        misses = ", ".join(row["misses"]) or "-"
        lines.append(f"| {row['sampler']} | {row['accuracy']:.0%} | {row['seconds']:.2f} | {misses} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--models", nargs="+", choices=list(MODELS), default=list(MODELS))
    parser.add_argument("--samplers", nargs="+", help="sampler aliases (default: every compatible one)")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--out", type=Path, default=Path("quality"), help="folder for the grids and tables")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    for name in args.models:
        rows = sweep(MODELS[name], args.samplers, args.seeds)
        grid(rows).save(args.out / f"{name}-grid.png")
        text = table(MODELS[name], rows, args.seeds)
        (args.out / f"{name}-accuracy.md").write_text(text)
        print(text, flush=True)
        low = [r["sampler"] for r in rows if r["accuracy"] < 0.95]
        print(f"{name}: {len(rows)} samplers, below 95%: {', '.join(low) or 'none'}\n", flush=True)


if __name__ == "__main__":
    main()
