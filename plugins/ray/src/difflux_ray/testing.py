"""Test helpers for difflux-ray (and for plugins that test batch or serving code against it).

Kept in the package, not in a conftest, because Ray workers import them: a pipeline loader given
to :func:`difflux_ray.batch.run_batch` runs inside each actor.
"""

from __future__ import annotations

import functools
import json
import os
import signal
from pathlib import Path
from typing import Any

from .runner import RunnerConfig, default_loader

__all__ = ["MODEL", "STEPS", "expected_png_pixels", "killing_loader", "png_pixels", "write_jobs"]

MODEL = "difflux:digits-text2img"
STEPS = 2  # enough to tell images apart; the model's own 20 would only cost time


def expected_png_pixels(pipe: Any, prompt: str, seed: int, steps: int = STEPS) -> Any:
    """The pixels (``uint8``, ``(height, width, 3)``) one direct pipeline call makes with this seed."""
    import numpy as np
    import torch

    image = pipe(prompt, num_inference_steps=steps, generator=torch.Generator().manual_seed(seed), output_type="pil")
    return np.asarray(image.images[0])


def png_pixels(path: Path) -> Any:
    """The pixels of a PNG file (``uint8``, ``(height, width, 3)``)."""
    import numpy as np
    import PIL.Image

    with PIL.Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def write_jobs(path: Path, count: int, **extra: Any) -> Path:
    """A JSON Lines file of ``count`` prompt jobs (``"a handwritten 0"`` ...), seeds left to the batch."""
    with path.open("w", encoding="utf-8") as out:
        for i in range(count):
            out.write(json.dumps({"prompt": f"a handwritten {i % 10}", "steps": STEPS, **extra}) + "\n")
    return path


def killing_loader(config: RunnerConfig, *, prompt: str, marker: str) -> Any:
    """A pipeline loader whose pipeline kills its own process (SIGKILL) the first time it meets ``prompt``.

    "First" is across restarts: the file ``marker`` is created just before the kill, and once it
    exists the pipeline runs normally. Use ``functools.partial(killing_loader, prompt=..., marker=...)``.
    """
    pipe = default_loader(config)
    base = type(pipe)

    @functools.wraps(base.__call__)
    def call(self: Any, *args: Any, **kwargs: Any) -> Any:
        if kwargs.get("prompt", args[0] if args else None) == prompt and not os.path.exists(marker):
            Path(marker).write_text(str(os.getpid()))
            os.kill(os.getpid(), signal.SIGKILL)
        return base.__call__(self, *args, **kwargs)

    pipe.__class__ = type(f"Killing{base.__name__}", (base,), {"__call__": call})
    return pipe
