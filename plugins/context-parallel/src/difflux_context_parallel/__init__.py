"""One DiT image over several processes: sequence parallel through PyTorch's context parallel.

Inside :func:`sequence_parallel`, a patched transformer (DiT) runs its blocks on ``1 / world`` of
the patch tokens per rank: a forward hook on ``pos_embed`` keeps this rank's contiguous slice of
the token sequence, PyTorch's ``context_parallel`` turns each ``scaled_dot_product_attention``
into ring attention over the process group (every query sees every key; Liu et al., 2023, "Ring
Attention with Blockwise Transformers"), and a hook on the last block all-gathers the tokens
before the output head. The model's code is not changed; the result equals the one-process
output (a test checks it on 2 CPU processes over gloo).

Every rank must run the same call with the same inputs (same seed): the pipeline's loop runs on
each rank, only the transformer's work is split.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

__all__ = ["sequence_parallel"]


@contextmanager
def sequence_parallel(model: Any, mesh: Any = None) -> Iterator[None]:
    """Run ``model`` (a DiT-style patched transformer) sequence-parallel over ``mesh`` inside the block.

    :param model: a module with ``pos_embed`` (tokens ``(batch, seq, dim)`` out) and
        ``transformer_blocks``; a model with cross-attention (``caption_projection``, PixArt) is
        refused, since ring attention would treat the caption keys as split too.
    :param mesh: a 1-D ``torch.distributed.DeviceMesh``; default: every rank of the default process
        group, on ``cuda`` when the model is there, else ``cpu``.
    :raises RuntimeError: ``torch.distributed`` is not initialised (run under ``torchrun`` /
        ``accelerate launch``).
    :raises NotImplementedError: the model has cross-attention, or lacks ``pos_embed`` / ``transformer_blocks``.
    :raises ValueError: (during the call) the token count is not divisible by the world size.
    """
    import torch
    import torch.distributed as dist
    from difflux.attention import attention_backend
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor.experimental import context_parallel
    from torch.distributed.tensor.experimental._context_parallel._attention import _cp_options

    if not dist.is_available() or not dist.is_initialized():
        raise RuntimeError(
            "sequence_parallel needs torch.distributed: run the script under torchrun or accelerate launch"
        )
    if getattr(model, "caption_projection", None) is not None:
        raise NotImplementedError(
            f"sequence_parallel: {type(model).__name__} has cross-attention to captions, which ring attention "
            "would split too; only self-attention transformers (DiT) are supported so far"
        )
    if not hasattr(model, "pos_embed") or not hasattr(model, "transformer_blocks"):
        raise NotImplementedError(f"sequence_parallel: {type(model).__name__} has no pos_embed / transformer_blocks")
    rank, world = dist.get_rank(), dist.get_world_size()
    if mesh is None:
        device = next(model.parameters()).device.type
        mesh = init_device_mesh(device, (world,))

    def shard(module: Any, args: Any, tokens: torch.Tensor) -> torch.Tensor:
        if tokens.shape[1] % world:
            raise ValueError(
                f"sequence_parallel: {tokens.shape[1]} patch tokens do not split over {world} processes; "
                "use an image size whose token count is a multiple of the world size"
            )
        n = tokens.shape[1] // world
        return tokens[:, rank * n : (rank + 1) * n].contiguous()

    def gather(module: Any, args: Any, tokens: torch.Tensor) -> torch.Tensor:
        parts = [torch.empty_like(tokens) for _ in range(world)]
        dist.all_gather(parts, tokens.contiguous(), group=mesh.get_group())
        return torch.cat(parts, dim=1)

    hooks = [
        model.pos_embed.register_forward_hook(shard),
        model.transformer_blocks[-1].register_forward_hook(gather),
    ]
    balance = _cp_options.enable_load_balance
    _cp_options.enable_load_balance = False  # contiguous slices, as the hooks cut them
    # context_parallel wants a buffer to shard; the tokens are sharded by the hook instead
    placeholder = torch.zeros(1, world, device=mesh.device_type)
    try:
        with attention_backend("sdpa"), context_parallel(mesh, buffers=[placeholder], buffer_seq_dims=[1]):
            yield
    finally:
        _cp_options.enable_load_balance = balance
        for hook in hooks:
            hook.remove()
