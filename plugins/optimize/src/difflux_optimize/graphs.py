"""CUDA graphs for the denoising step (mode ``"max"``).

The denoiser's forward is captured once per static input signature (shapes, dtypes, devices and
the non-tensor arguments) after a few eager warm-up calls (which also trigger compilation), then
replayed: a step costs one graph launch instead of hundreds of kernel launches. Inputs are copied
into the captured buffers; outputs are cloned out, so a caller may keep them across steps.

The scheduler step and classifier-free guidance stay outside the graph: they are a handful of
element-wise kernels on one latent (``2 x 4 x 128 x 128`` for SDXL), microseconds next to a
UNet step (the GPU bench's profile table shows them).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Hashable
from typing import Any

import torch
from difflux.optimize import OptimizeContext, offload_reason
from torch.utils._pytree import tree_flatten, tree_unflatten

__all__ = ["CUDAGraphedForward", "cuda_graphs"]

logger = logging.getLogger("difflux")


def _clone_out(out: Any) -> Any:
    if isinstance(out, torch.Tensor):
        return out.clone()
    if isinstance(out, tuple | list):
        return type(out)(_clone_out(o) for o in out)
    if isinstance(out, dict):
        return {k: _clone_out(v) for k, v in out.items()}
    if dataclasses.is_dataclass(out) and not isinstance(out, type):
        return dataclasses.replace(out, **{f.name: _clone_out(getattr(out, f.name)) for f in dataclasses.fields(out)})
    return out


@dataclasses.dataclass
class _Captured:
    graph: torch.cuda.CUDAGraph
    inputs: list[torch.Tensor]
    output: Any


class CUDAGraphedForward:
    """``forward`` replayed from CUDA graphs, one per static input signature.

    :param forward: the model's forward.
    :param warmup: eager calls per signature before capture (compilation happens in these).
    :param max_graphs: signatures captured at most; later ones run eager (logged once).
    """

    def __init__(self, forward: Callable[..., Any], device: torch.device, warmup: int = 2, max_graphs: int = 4) -> None:
        self.inner = forward
        self.device = device
        self.warmup = warmup
        self.max_graphs = max_graphs
        self.graphs: dict[Hashable, _Captured] = {}
        self.seen: dict[Hashable, int] = {}
        self.pool: Any = None
        self.failed: str | None = None
        self._full_logged = False

    @staticmethod
    def _signature(leaves: list[Any], spec: Any) -> Hashable | None:
        key: list[Any] = [str(spec)]
        for leaf in leaves:
            if isinstance(leaf, torch.Tensor):
                if leaf.device.type != "cuda":
                    return None
                key.append((tuple(leaf.shape), leaf.stride(), leaf.dtype, leaf.device))
            else:
                try:
                    hash(leaf)
                except TypeError:
                    return None
                key.append(("value", leaf))
        return tuple(key)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if self.failed is not None or torch.is_grad_enabled() or torch.cuda.is_current_stream_capturing():
            return self.inner(*args, **kwargs)
        leaves, spec = tree_flatten((args, kwargs))
        # a timestep often comes as a CPU scalar: move small CPU tensors to the GPU (a copy inside a
        # graph cannot read host memory); the model would move them itself
        leaves = [
            leaf.to(self.device, non_blocking=True)
            if isinstance(leaf, torch.Tensor) and leaf.device.type == "cpu" and leaf.numel() <= 64
            else leaf
            for leaf in leaves
        ]
        key = self._signature(leaves, spec)
        if key is None:  # an unhashable argument or a large tensor off the GPU
            return self.inner(*args, **kwargs)
        captured = self.graphs.get(key)
        if captured is None:
            if len(self.graphs) >= self.max_graphs:
                if not self._full_logged:
                    self._full_logged = True
                    logger.info(
                        "difflux optimize: cuda_graphs: %d input shapes captured; others run eager", self.max_graphs
                    )
                return self.inner(*args, **kwargs)
            count = self.seen.get(key, 0) + 1
            self.seen[key] = count
            if count <= self.warmup:
                return self.inner(*args, **kwargs)
            try:
                captured = self._capture(leaves, spec)
            except RuntimeError as exc:  # something in forward cannot be captured (a host sync ...)
                torch.cuda.synchronize()
                self.failed = " ".join(str(exc).split())[:300]
                logger.warning(
                    "difflux optimize: cuda_graphs: the forward runs eager: capture failed (%s)", self.failed
                )
                return self.inner(*args, **kwargs)
            self.graphs[key] = captured
        tensors = [leaf for leaf in leaves if isinstance(leaf, torch.Tensor)]
        for static, new in zip(captured.inputs, tensors, strict=True):
            static.copy_(new)
        captured.graph.replay()
        return _clone_out(captured.output)

    def _capture(self, leaves: list[Any], spec: Any) -> _Captured:
        static_leaves = [leaf.clone() if isinstance(leaf, torch.Tensor) else leaf for leaf in leaves]
        inputs = [leaf for leaf in static_leaves if isinstance(leaf, torch.Tensor)]
        args, kwargs = tree_unflatten(static_leaves, spec)
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            self.inner(*args, **kwargs)  # one more warm-up on the capture stream
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self.pool):
            output = self.inner(*args, **kwargs)
        self.pool = graph.pool()
        return _Captured(graph, inputs, output)


def cuda_graphs(ctx: OptimizeContext) -> str | None:
    """Replay the denoiser's forward from CUDA graphs (mode ``"max"``, CUDA only).

    Options: ``cuda_graph_warmup`` (eager calls before capture, default 2),
    ``cuda_graph_max`` (signatures captured, default 4).
    """
    if not ctx.is_denoiser:
        return "it runs once per image, not once per step (graphs pay off in the denoising loop)"
    why = offload_reason(ctx.model)
    if why is not None:
        return why
    if isinstance(ctx.model.forward, CUDAGraphedForward):
        return "already applied"
    ctx.model.forward = CUDAGraphedForward(  # type: ignore[method-assign]
        ctx.model.forward,
        ctx.device,
        warmup=int(ctx.options.get("cuda_graph_warmup", 2)),
        max_graphs=int(ctx.options.get("cuda_graph_max", 4)),
    )
    return None
