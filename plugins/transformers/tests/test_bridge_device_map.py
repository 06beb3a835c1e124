"""The bridge passes the device-map options on: a text encoder loaded under a memory limit goes to disk
and still gives the same hidden states."""

from __future__ import annotations

from pathlib import Path

import torch
from difflux.options import LoadOptions
from difflux_transformers.bridge import load_component
from difflux_transformers.testing import tiny_clip_text_model


def test_max_memory_and_offload_folder_reach_transformers(tmp_path: Path) -> None:
    model = tiny_clip_text_model(0).eval()
    model.save_pretrained(tmp_path / "te")
    ids = torch.tensor([[0, 5, 7, 1]])
    with torch.no_grad():
        expected = model(ids).last_hidden_state
    options = LoadOptions(device_map="auto", max_memory={"cpu": 20_000}, offload_folder=tmp_path / "offload")
    loaded = load_component("CLIPTextModel", tmp_path / "te", options)
    assert "disk" in set(loaded.hf_device_map.values())  # the 20 kB budget holds almost nothing
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids).last_hidden_state, expected, rtol=1e-6, atol=1e-6)
