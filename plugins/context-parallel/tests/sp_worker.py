"""Under ``torchrun --nproc_per_node 2``: a tiny DiT, sequence-parallel against one process; one line per rank."""

from __future__ import annotations

import torch
import torch.distributed as dist
from difflux_context_parallel import sequence_parallel
from difflux_models import DiTTransformer2DModel


def main() -> None:
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    torch.manual_seed(0)  # every rank builds the same weights and inputs
    model = DiTTransformer2DModel(
        num_attention_heads=2, attention_head_dim=8, in_channels=4, num_layers=2, sample_size=8, patch_size=2
    ).eval()
    x = torch.randn(2, 4, 8, 8)
    labels = torch.tensor([1, 3])
    worst = 0.0
    with torch.no_grad():
        for t in (999, 500, 10):  # a few steps of a denoising loop
            timestep = torch.tensor([t, t])
            want = model(x, timestep=timestep, class_labels=labels).sample
            with sequence_parallel(model):
                got = model(x, timestep=timestep, class_labels=labels).sample
            worst = max(worst, (got - want).abs().max().item())
            x = x - 0.1 * got
        after = model(x, timestep=timestep, class_labels=labels).sample  # hooks gone: a plain forward
    odd_ok = False
    try:
        with torch.no_grad(), sequence_parallel(model):
            model(torch.randn(1, 4, 6, 6), timestep=torch.tensor([1]), class_labels=torch.tensor([0]))
    except ValueError as exc:
        odd_ok = "9 patch tokens do not split over 2 processes" in str(exc)
    print(f"rank {rank} maxdiff {worst:.3g} shape {tuple(after.shape)} odd_refused {odd_ok}", flush=True)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
