"""Sequence-parallel DiT: equal to one process on 2 CPU processes over gloo (slow); refusals (default)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from difflux_context_parallel import sequence_parallel

TORCHRUN = Path(sys.executable).with_name("torchrun")


class _Captioned(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.caption_projection = torch.nn.Linear(2, 2)


def test_it_refuses_without_torch_distributed_and_for_cross_attention(tmp_path: Path) -> None:
    match = "run the script under torchrun or accelerate launch"
    with pytest.raises(RuntimeError, match=match), sequence_parallel(torch.nn.Linear(2, 2)):
        pass
    torch.distributed.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        with pytest.raises(NotImplementedError, match="cross-attention to captions"), sequence_parallel(_Captioned()):
            pass
        match = "has no pos_embed / transformer_blocks"
        with pytest.raises(NotImplementedError, match=match), sequence_parallel(torch.nn.Linear(2, 2)):
            pass
    finally:
        torch.distributed.destroy_process_group()


@pytest.mark.slow  # two processes importing torch: ~8 s CPU
def test_a_dit_split_over_two_cpu_processes_equals_one_process() -> None:
    worker = Path(__file__).with_name("sp_worker.py")
    command = [str(TORCHRUN), "--nproc_per_node", "2", "--master_port", "29531", str(worker)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = re.findall(r"rank (\d) maxdiff (\S+) shape (\(.*?\)) odd_refused (\w+)", done.stdout)
    assert sorted(r for r, *_ in lines) == ["0", "1"], done.stdout
    for _, diff, shape, odd in lines:
        assert float(diff) <= 1e-5
        assert shape == "(2, 4, 8, 8)" and odd == "True"
