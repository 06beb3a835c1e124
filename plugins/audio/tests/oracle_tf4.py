"""Write the reference waveforms of the cases Diffusers 0.42.1 cannot run under transformers 5.

Run by ``nox -s audio-oracle`` (a venv with transformers 4 below 4.50, where Diffusers 0.42.1 runs
MusicLDM and AudioLDM2 with ``GPT2Model``); it writes
``data/reference_tf4.safetensors``, which the tests compare difflux against. Each tensor is a case
of :data:`audio_builders.REFERENCE_CASES`, every 4th sample of its waveforms (a few KB in all).
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))

from audio_builders import BUILDERS, REFERENCE_CASES  # noqa: E402

REGENERATE = "nox -s audio-oracle"
OUT = HERE / "data" / "reference_tf4.safetensors"


def _import_transformers_4() -> Any:
    """transformers 4 refuses huggingface_hub 1.x at import (a declared bound), which diffusers 0.42.1
    needs; nothing here downloads, so let it import over hub 1.x."""
    import importlib.metadata as md

    real = md.version
    md.version = lambda name: "0.36.0" if name.replace("_", "-").lower() == "huggingface-hub" else real(name)
    try:
        import transformers
    finally:
        md.version = real
    return transformers


def main() -> None:
    from safetensors.torch import save_file

    transformers = _import_transformers_4()

    if int(transformers.__version__.split(".")[0]) >= 5:
        raise SystemExit(f"run under transformers 4 ({REGENERATE}); this is {transformers.__version__}")
    tensors: dict[str, torch.Tensor] = {}
    with tempfile.TemporaryDirectory() as tmp:
        pipes = {name: build(Path(tmp) / name) for name, build in BUILDERS.items()}
        for case, (which, kwargs) in REFERENCE_CASES.items():
            audio = pipes[which](**kwargs, generator=torch.Generator().manual_seed(0)).audios
            tensors[case] = torch.as_tensor(audio)[:, ::4].contiguous().float()
    metadata = {"regenerate": REGENERATE, "transformers": transformers.__version__, "stride": "4"}
    OUT.parent.mkdir(exist_ok=True)
    save_file(tensors, str(OUT), metadata=metadata)
    print(f"wrote {OUT} ({OUT.stat().st_size} bytes): {sorted(tensors)}")


if __name__ == "__main__":
    main()
