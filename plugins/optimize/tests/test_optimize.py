"""optimize() on tiny SD, SDXL and DiT pipelines: eager outputs kept, no recompiles, honest skips, the hook.

Most compile tests use the ``eager`` torch.compile backend: dynamo traces every block exactly as
with inductor (graphs, guards, recompiles, fallbacks), without C++ code generation, which takes
minutes on two shared cores. One test compiles the tiny DiT with inductor for real.
"""

from __future__ import annotations

import logging
import types
from pathlib import Path
from typing import Any

import difflux
import difflux_schedulers
import pytest
import torch
from difflux.errors import ConfigError
from difflux.optimize import OptimizeContext, registered_optimizations
from difflux.registry import reset_registry
from difflux_optimize.graphs import CUDAGraphedForward
from difflux_optimize.layout import cpu_supports_bf16
from difflux_optimize.regional import _Region
from torch.utils._python_dispatch import TorchDispatchMode

ATOL = 1e-4  # fp32 CPU, on latents
FAST = {"compile_backend": "eager"}


def _sd_latents(pipe: Any, size: int = 32, seed: int = 0) -> torch.Tensor:
    out = pipe(
        "a cat",
        num_inference_steps=2,
        height=size,
        width=size,
        generator=torch.Generator().manual_seed(seed),
        output_type="latent",
    )
    return out.images  # type: ignore[no-any-return]


def _dit_latents(pipe: Any) -> torch.Tensor:
    out = pipe(
        class_labels=[1, 3], num_inference_steps=2, generator=torch.Generator().manual_seed(0), output_type="latent"
    )
    return out.images  # type: ignore[no-any-return]


def _regions(model: torch.nn.Module) -> list[torch.nn.Module]:
    return [m for m in model.modules() if isinstance(getattr(m, "_compiled_call_impl", None), _Region)]


# -- registration -------------------------------------------------------------------------------


def test_first_party_optimizations_are_registered_in_order() -> None:
    table = registered_optimizations()
    names = [n for n, s in table.items() if s.plugin == "optimize"]
    assert names == [
        "cpu_allocator",
        "channels_last",
        "fuse_qkv",
        "cpu_bf16_autocast",
        "regional_compile",
        "cuda_graphs",
    ]
    assert table["cuda_graphs"].modes == frozenset({"max"}) and table["cuda_graphs"].devices == frozenset({"cuda"})
    assert table["regional_compile"].group == "compiler"


def test_bad_mode_and_names_are_errors_before_anything_changes(kit: Any) -> None:
    unet = kit.tiny_unet()
    with pytest.raises(ConfigError, match="mode must be one of"):
        unet.optimize("fast")
    with pytest.raises(ConfigError, match=r"unknown optimization\(s\) \['tensorrt'\]"):
        unet.optimize(skip=("tensorrt",))
    assert not unet.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    assert not _regions(unet)
    pipe = kit.tiny_dit()
    with pytest.raises(ConfigError, match=r"\['scheduler'\] are not torch modules of this DiTPipeline"):
        pipe.optimize(components=["scheduler"])


# -- pipelines keep their outputs and do not recompile ------------------------------------------


def test_sd_default_matches_eager_and_reuses_graphs(kit: Any, tmp_path: Path) -> None:
    from difflux_models.layers.resnet import ResnetBlock2D
    from difflux_models.layers.transformer_2d import SpatialTransformer2D

    pipe = kit.tiny_sd(tmp_path)
    eager = _sd_latents(pipe)
    eager_48 = _sd_latents(pipe, size=48)
    report = pipe.optimize(**FAST)
    assert report.applied_to("unet") == ["channels_last", "fuse_qkv", "regional_compile"]
    assert ("unet", "cuda_graphs", "runs on cuda, not cpu") not in report.skipped  # a "max" piece: not tried
    assert "text_encoder" not in {c for c, _ in report.applied}
    compiled = {type(m) for m in _regions(pipe.unet)}
    assert compiled == {ResnetBlock2D, SpatialTransformer2D}
    assert pipe.unet.conv_in.weight.is_contiguous(memory_format=torch.channels_last)

    fast = _sd_latents(pipe)
    assert kit.graphs() > 0
    assert (fast - eager).abs().max().item() <= ATOL
    compiled_once = kit.graphs()
    again = _sd_latents(pipe)
    assert kit.graphs() == compiled_once, "a second call with the same shapes recompiled"
    assert torch.equal(again, fast)
    # another resolution: the spatial dims are dynamic, so no block compiles again
    fast_48 = _sd_latents(pipe, size=48)
    assert kit.graphs() == compiled_once, "a second resolution recompiled"
    assert (fast_48 - eager_48).abs().max().item() <= ATOL


def test_sdxl_default_matches_eager_and_does_not_recompile(kit: Any, tmp_path: Path) -> None:
    pipe = kit.tiny_sdxl(tmp_path)
    eager = _sd_latents(pipe)
    report = pipe.optimize(**FAST)
    assert "regional_compile" in report.applied_to("unet")
    fast = _sd_latents(pipe)
    assert (fast - eager).abs().max().item() <= ATOL
    compiled_once = kit.graphs()
    assert compiled_once > 0
    _sd_latents(pipe, seed=1)
    assert kit.graphs() == compiled_once


def test_dit_inductor_compile_matches_eager_and_writes_the_compile_cache(
    kit: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The one real inductor compile of the default run: two identical transformer blocks, one graph."""
    from difflux.attention import attention_backend

    with attention_backend("sdpa"):  # a context used once in the process must not stop tracing
        pass
    pipe = kit.tiny_dit()
    eager = _dit_latents(pipe)
    report = pipe.optimize(components=["transformer"], cache_dir=tmp_path / "cache")
    assert report.applied_to("transformer") == ["channels_last", "fuse_qkv", "regional_compile"]  # patch conv
    assert len(_regions(pipe.transformer)) == 2  # the two BasicTransformerBlocks
    fast = _dit_latents(pipe)
    assert (fast - eager).abs().max().item() <= ATOL
    assert kit.graphs() == 1, "two blocks of one class and shape should share one graph"
    _dit_latents(pipe)
    assert kit.graphs() == 1
    saved = list((tmp_path / "cache").glob("DiTTransformer2DModel-*.bin"))
    assert len(saved) == 1 and saved[0].stat().st_size > 0

    # the next optimize() of the same model and settings loads those artefacts instead of saving
    caplog.clear()
    again = kit.tiny_dit()
    again.optimize(components=["transformer"], cache_dir=tmp_path / "cache")
    assert f"difflux optimize: loaded compiled artefacts from {saved[0]}" in caplog.messages
    assert not again.transformer._forward_hooks
    assert (_dit_latents(again) - eager).abs().max().item() <= ATOL


# -- mode "max" -----------------------------------------------------------------------------------


@pytest.mark.skipif(not cpu_supports_bf16(), reason="this CPU has no native bf16")
def test_max_on_cpu_adds_bf16_autocast(kit: Any) -> None:
    unet = kit.tiny_unet()
    x, t, text = torch.randn(2, 4, 8, 8), torch.tensor(10), torch.randn(2, 7, 32)
    with torch.no_grad():
        eager = unet(x, t, text).sample
        report = unet.optimize("max", only=("cpu_bf16_autocast", "cuda_graphs"))
        assert report.applied_to("UNet2DConditionModel") == ["cpu_bf16_autocast"]
        assert report.skipped == [("UNet2DConditionModel", "cuda_graphs", "runs on cuda, not cpu")]
        fast = unet(x, t, text).sample
    assert fast.dtype == torch.float32
    # bf16 keeps 8 bits of mantissa: close to eager, but not within fp32 tolerance
    assert 0 < (fast - eager).abs().max().item() < 0.05 * eager.abs().max().item() + 0.02


def test_cpu_bf16_autocast_skips_a_half_model(kit: Any) -> None:
    unet = kit.tiny_unet().to(torch.bfloat16)
    report = unet.optimize("max", only=("cpu_bf16_autocast",))
    assert report.skipped == [("UNet2DConditionModel", "cpu_bf16_autocast", "the model is torch.bfloat16, not float32")]


def test_cpu_allocator_advises_and_never_sets_variables(kit: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    from difflux_optimize.layout import ALLOCATOR_ADVICE

    unet = kit.tiny_unet()
    before = dict(os.environ)
    report = unet.optimize(only=("cpu_allocator",))
    assert report.applied == []
    [(_, name, why)] = report.skipped
    assert name == "cpu_allocator" and why.startswith(f"advice only: start Python with {ALLOCATOR_ADVICE}")
    assert dict(os.environ) == before
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "4294967296")
    assert unet.optimize(only=("cpu_allocator",)).applied == [("UNet2DConditionModel", "cpu_allocator")]


# -- honest fallbacks ---------------------------------------------------------------------------


def test_offloaded_model_skips_compile_and_fusion_with_one_log_line(kit: Any, caplog: pytest.LogCaptureFixture) -> None:
    unet = kit.tiny_unet()
    unet.mid_block._hf_hook = object()  # what accelerate's offload hooks leave on a module
    report = unet.optimize(**FAST)
    assert report.applied_to("UNet2DConditionModel") == ["channels_last"]
    skipped = {o: why for _, o, why in report.skipped}
    assert skipped["regional_compile"] == "it is offloaded (accelerate hook on mid_block)"
    assert skipped["fuse_qkv"].startswith("it is offloaded")
    lines = [r.getMessage() for r in caplog.records if "skipped regional_compile" in r.getMessage()]
    assert lines == [
        "difflux optimize: skipped regional_compile for UNet2DConditionModel: "
        "it is offloaded (accelerate hook on mid_block)"
    ]
    assert not _regions(unet)


def _untraceable_attention(
    q: Any, k: Any, v: Any, attn_mask: Any = None, scale: Any = None, is_causal: bool = False
) -> Any:
    torch._dynamo.graph_break()  # stands for a kernel torch cannot trace
    return torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, scale=scale)


class _UntraceablePlugin:
    @difflux.hookimpl
    def difflux_register_attention_backends(self, register: Any) -> None:
        register("untraceable", _untraceable_attention, priority=-1)


def test_a_block_torch_cannot_trace_runs_eager_with_one_warning(kit: Any, caplog: pytest.LogCaptureFixture) -> None:
    reset_registry([("untraceable-test", _UntraceablePlugin())])
    try:
        unet = kit.tiny_unet()
        unet.set_attention_backend("untraceable")
        x, t, text = torch.randn(2, 4, 8, 8), torch.tensor(10), torch.randn(2, 7, 32)
        with torch.no_grad():
            eager = unet(x, t, text).sample
            unet.optimize(**FAST)
            fast = unet(x, t, text).sample
            fast_again = unet(x, t, text).sample
    finally:
        reset_registry()
    assert (fast - eager).abs().max().item() <= ATOL and torch.equal(fast, fast_again)
    warnings = [
        r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and "runs eager" in r.getMessage()
    ]
    assert len(warnings) == 1 and warnings[0].startswith(
        "difflux optimize: regional_compile: SpatialTransformer2D runs eager: torch.compile cannot trace it"
    )
    assert kit.graphs() > 0  # the residual blocks are still compiled


# -- a third party's optimisation ---------------------------------------------------------------


class _ThirdParty:
    """A plugin that registers a whole-model "compiler" ahead of regional_compile."""

    def __init__(self) -> None:
        self.seen: list[OptimizeContext] = []

    def apply(self, ctx: OptimizeContext) -> str | None:
        self.seen.append(ctx)
        if ctx.options.get("no_engine"):
            return "no engine for this GPU"
        ctx.model.forward = types.MethodType(lambda self, *a, **k: "engine output", ctx.model)  # type: ignore[method-assign]
        return None

    @difflux.hookimpl
    def difflux_register_optimizations(self, register: Any) -> None:
        register("fake_engine", self.apply, order=400, group="compiler")


def test_a_third_party_optimization_is_applied_through_the_hook(kit: Any, tmp_path: Path) -> None:
    plugin = _ThirdParty()
    reset_registry([("fake-engine", plugin)])
    try:
        assert registered_optimizations()["fake_engine"].plugin == "fake-engine"
        pipe = kit.tiny_sd(tmp_path)
        report = pipe.optimize(components=["unet"], **FAST)
        assert report.applied_to("unet") == ["channels_last", "fuse_qkv", "fake_engine"]
        assert ("unet", "regional_compile", "the compiler 'fake_engine' already applies") in report.skipped
        assert pipe.unet(None) == "engine output"
        assert [c.name for c in plugin.seen] == ["unet"] and plugin.seen[0].pipeline is pipe
        assert "optimization" in {kind for kind, _ in difflux.get_registry().plugins["fake-engine"].registered}

        # when the engine cannot apply, regional compilation takes the "compiler" slot
        unet = kit.tiny_unet()
        report = unet.optimize(no_engine=True, **FAST)
        assert ("UNet2DConditionModel", "fake_engine", "no engine for this GPU") in report.skipped
        assert "regional_compile" in report.applied_to("UNet2DConditionModel")
        assert str(report).splitlines()[0] == "optimize(mode='default')"
    finally:
        reset_registry()


# -- CUDA -----------------------------------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_max_matches_eager_in_fp16(kit: Any) -> None:
    unet = kit.tiny_unet().to("cuda", torch.float16)
    x = torch.randn(2, 4, 16, 16, device="cuda", dtype=torch.float16)
    text = torch.randn(2, 7, 32, device="cuda", dtype=torch.float16)
    with torch.no_grad():
        eager = [unet(x, torch.tensor(t, device="cuda"), text).sample for t in (10, 500, 900)]
        report = unet.optimize("max")
        assert report.applied_to("UNet2DConditionModel")[-1] == "cuda_graphs"
        assert isinstance(unet.forward, CUDAGraphedForward)
        fast = [unet(x, torch.tensor(t, device="cuda"), text).sample for t in (10, 500, 900) for _ in range(2)]
    assert len(unet.forward.graphs) == 1
    for i, e in enumerate(eager):
        assert (fast[2 * i + 1].float() - e.float()).abs().max().item() < 1e-2


# -- the loop around the graph: nothing waits for the device ---------------------------------------


class _HostReads(TorchDispatchMode):
    """Counts reads of a tensor's value on the host (``int(t)``, ``t.item()``, ``bool(t)``: on a GPU each one
    waits for every queued kernel) made outside the denoiser's forward."""

    def __init__(self) -> None:
        super().__init__()
        self.reads = 0
        self.in_denoiser = 0

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        if func.overloadpacket is torch.ops.aten._local_scalar_dense and not self.in_denoiser:
            self.reads += 1
        return func(*args, **(kwargs or {}))


#: every scheduler the SD pipeline takes (its ``compatibles``), and the ones other SD-base families use
_LOOP_SCHEDULERS = sorted(
    {c.__name__ for c in difflux_schedulers.DDIMScheduler().compatibles}
    | {"LCMScheduler", "DDIMParallelScheduler", "DDPMParallelScheduler"}
)


@pytest.mark.parametrize("name", _LOOP_SCHEDULERS)
def test_the_denoising_loop_never_reads_a_device_value_on_the_host(name: str, kit: Any, tmp_path: Path) -> None:
    """Guidance and the scheduler step stay outside the CUDA graph; that is cheap only if the host never waits
    for the device between steps, so it queues step k+1 while the graph of step k runs. A value read on the
    host (``int(timestep)`` of a GPU tensor) would wait for it: none may happen from the first denoiser call
    to the last step, for every scheduler the SD pipeline takes."""
    assert len(_LOOP_SCHEDULERS) >= 17
    pipe = kit.tiny_sd(tmp_path)
    pipe.scheduler = getattr(difflux_schedulers, name).from_config(pipe.scheduler.config)
    mode = _HostReads()
    forward = pipe.unet.forward
    calls: list[int] = []

    def counted(*args: Any, **kwargs: Any) -> Any:
        calls.append(mode.reads)
        mode.in_denoiser += 1
        try:
            return forward(*args, **kwargs)
        finally:
            mode.in_denoiser -= 1

    pipe.unet.forward = counted
    steps: list[int] = []
    with mode:
        pipe(
            "a cat",
            num_inference_steps=6,
            height=16,
            width=16,
            output_type="latent",
            callback_on_step_end=lambda p, i, t, kw: steps.append(mode.reads) or {},
        )
    assert len(calls) >= 6
    assert steps[-1] - calls[0] == 0, f"{name}: {steps[-1] - calls[0]} host reads in the loop"


def test_the_host_copy_of_the_schedule_follows_in_place_changes() -> None:
    from difflux_schedulers import DDIMScheduler

    scheduler = DDIMScheduler()
    scheduler.set_timesteps(5)
    ts = scheduler.timesteps
    assert [scheduler._timestep_value(t) for t in ts] == ts.tolist()
    assert scheduler._timestep_value(ts[2:][1]) == int(ts[3])  # a view of a view still maps
    ts[3] = 7  # in place: the host copy is refreshed
    assert scheduler._timestep_value(ts[3]) == 7
    other = torch.tensor([999, 500])  # not a view into the schedule: read as is
    assert scheduler._timestep_value(other[1]) == 500
    scheduler.set_timesteps(3)  # a new schedule
    assert [scheduler._timestep_value(t) for t in scheduler.timesteps] == scheduler.timesteps.tolist()


# -- the compile cache across processes -------------------------------------------------------------

_CACHE_SCRIPT = """
import json, logging, sys, time, torch
logging.basicConfig(level=logging.INFO)
sys.path.insert(0, sys.argv[2])
from conftest import tiny_dit
pipe = tiny_dit()
t0 = time.perf_counter()
pipe.optimize(components=["transformer"], cache_dir=sys.argv[1])
pipe(class_labels=[1, 3], num_inference_steps=1, generator=torch.Generator().manual_seed(0), output_type="latent")
from torch._dynamo.utils import counters
hits, misses = counters["inductor"]["fxgraph_cache_hit"], counters["inductor"]["fxgraph_cache_miss"]
print(json.dumps({"seconds": time.perf_counter() - t0, "hits": hits, "misses": misses}))
"""


@pytest.mark.slow
def test_a_second_process_reuses_the_compiled_artefacts(tmp_path: Path) -> None:
    """Two processes, each with an empty inductor cache: the second loads the first one's artefacts."""
    import json
    import os
    import subprocess
    import sys

    cache = tmp_path / "cache"
    results = []
    for run in ("first", "second"):
        env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / f"inductor-{run}")}
        out = subprocess.run(
            [sys.executable, "-c", _CACHE_SCRIPT, str(cache), str(Path(__file__).parent)],
            env=env,
            capture_output=True,
            text=True,
            check=True,
        )
        results.append(json.loads(out.stdout.strip().splitlines()[-1]))
        if run == "second":
            assert "difflux optimize: loaded compiled artefacts" in out.stderr
    assert len(list(cache.glob("*.bin"))) == 1
    # each process has an empty inductor cache: the first compiles, the second's hits come from the artefacts
    assert results[0]["hits"] == 0 and results[0]["misses"] > 0
    assert results[1]["hits"] == results[0]["misses"] and results[1]["misses"] == 0, results
