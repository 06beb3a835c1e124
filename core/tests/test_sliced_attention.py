"""Sliced attention (``enable_attention_slicing``), backend options, probes and the xFormers switches.

The sliced backend is checked against core's reference backend (same numbers, float32 within
1e-5), by the slices its inner backend receives, and by measured peak memory in a subprocess.
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest
import torch
from difflux import hookimpl
from difflux.attention import (
    ENV_VAR,
    AttentionBackendChoice,
    AttentionBackendError,
    attention,
    attention_backend,
    reference_attention,
    set_attention_backend,
)
from difflux.cli import plugins_report
from difflux.errors import ConfigError
from difflux.modeling import ModelMixin
from difflux.pipeline import DiffusionPipeline
from difflux.registry import get_registry, reset_registry
from difflux.sliced_attention import SLICED_BACKEND, check_slice_size, heads_per_slice, sliced_attention
from difflux.testing import AttentionBackendConformance

Calls = list[tuple[str, tuple[int, ...], dict[str, Any]]]


class _Recorder:
    """A throwaway plugin: backends that record the shapes and options they get, then compute the reference."""

    def __init__(self, calls: Calls, specs: dict[str, dict[str, Any]]) -> None:
        self.calls = calls
        self.specs = specs

    def _make(self, name: str) -> Any:
        def backend(*args: Any, **options: Any) -> torch.Tensor:
            self.calls.append((name, tuple(args[0].shape), options))
            return reference_attention(*args)

        return backend

    @hookimpl
    def difflux_register_attention_backends(self, register: Any) -> None:
        for name, constraints in self.specs.items():
            register(name, self._make(name), **constraints)


@pytest.fixture
def clean(monkeypatch: pytest.MonkeyPatch) -> Iterator[pytest.MonkeyPatch]:
    monkeypatch.setenv("DIFFLUX_DISABLE_PLUGIN_AUTOLOAD", "1")
    monkeypatch.delenv("DIFFLUX_LOAD_PLUGINS", raising=False)
    monkeypatch.delenv(ENV_VAR, raising=False)
    try:
        yield monkeypatch
    finally:
        set_attention_backend(None)
        reset_registry()


@pytest.fixture
def calls(clean: pytest.MonkeyPatch) -> Calls:
    recorded: Calls = []
    specs: dict[str, dict[str, Any]] = {
        "rec": {"priority": 10},
        "gone": {"priority": 20, "probe": lambda: "needs a CUDA device; this process has none"},
        "eights": {"priority": 30, "accepts": lambda q, m, c: None if q.shape[-1] % 8 == 0 else "needs head dim % 8"},
    }
    reset_registry(extra_plugins=[("recorder", _Recorder(recorded, specs))])
    return recorded


def _qkv(batch: int = 2, heads: int = 4, n_q: int = 9, n_k: int = 11, dim: int = 6, seed: int = 0) -> Any:
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(batch, heads, n_q, dim, generator=g)
    k = torch.randn(batch, heads, n_k, dim, generator=g)
    v = torch.randn(batch, heads, n_k, dim + 1, generator=g)
    return q, k, v


def _mask(kind: str, shape: tuple[int, ...]) -> torch.Tensor | None:
    g = torch.Generator().manual_seed(7)
    if kind == "none":
        return None
    keep = torch.rand(shape, generator=g) > 0.3
    keep[..., 0] = True
    return keep if kind == "bool" else torch.randn(shape, generator=g).masked_fill(~keep, -1e4)


# -- the kernel ----------------------------------------------------------------------------------


@pytest.mark.parametrize("slice_size", ["auto", "max", 3, None])
@pytest.mark.parametrize("query_chunk_size", [None, 4])
@pytest.mark.parametrize("mask", ["none", "bool", "float-2d", "float-per-head"])
@pytest.mark.parametrize("causal", [False, True])
def test_sliced_equals_reference(
    calls: Calls, slice_size: Any, query_chunk_size: int | None, mask: str, causal: bool
) -> None:
    q, k, v = _qkv()
    shape = {"none": (1,), "bool": (2, 1, 9, 11), "float-2d": (9, 11), "float-per-head": (2, 4, 1, 11)}[mask]
    m = _mask(mask.split("-")[0], shape)
    got = sliced_attention(q, k, v, m, 0.3, causal, slice_size=slice_size, query_chunk_size=query_chunk_size)
    want = reference_attention(q, k, v, m, 0.3, causal)
    assert got.shape == want.shape and got.dtype == want.dtype
    assert (got - want).abs().max().item() <= 1e-5


@pytest.mark.parametrize(("slice_size", "heads_each"), [("auto", 2), ("max", 1), (3, 3), (None, 4)])
def test_inner_backend_gets_one_slice_at_a_time(calls: Calls, slice_size: Any, heads_each: int) -> None:
    q, k, v = _qkv(heads=4, dim=8)
    sliced_attention(q, k, v, slice_size=slice_size, query_chunk_size=5, inner="rec")
    shapes = [shape for _, shape, _ in calls]
    per_batch = -(-4 // heads_each) * 2  # head slices x query chunks (9 queries in chunks of 5)
    assert len(shapes) == 2 * per_batch
    assert max(s[1] for s in shapes) == heads_each and {s[2] for s in shapes} == {5, 4}
    assert all(s[0] == 1 for s in shapes)


def test_automatic_inner_skips_unavailable_and_rejecting_backends(calls: Calls) -> None:
    q, k, v = _qkv(dim=6)  # 'eights' rejects head dim 6, 'gone' is unavailable: 'rec' runs
    sliced_attention(q, k, v, slice_size="max")
    assert {name for name, _, _ in calls} == {"rec"}
    calls.clear()
    q, k, v = _qkv(dim=8)
    sliced_attention(q, k, v, slice_size="max")
    assert {name for name, _, _ in calls} == {"eights"}


def test_sliced_is_never_chosen_automatically_and_not_its_own_inner(calls: Calls) -> None:
    q, k, v = _qkv(dim=6)
    attention(q, k, v)
    assert calls[-1][0] == "rec"
    with pytest.raises(AttentionBackendError, match="itself"):
        sliced_attention(q, k, v, inner=SLICED_BACKEND)


@pytest.mark.parametrize(
    ("value", "message"),
    [(0, "positive int"), (True, "positive int"), ("half", "positive int"), (2.0, "positive int"), (9, "at most 8")],
)
def test_bad_slice_sizes_are_refused(value: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        check_slice_size(value, heads=8)


def test_heads_per_slice() -> None:
    assert [heads_per_slice(s, 8) for s in ("auto", "max", 3, 20)] == [4, 1, 3, 8]
    assert heads_per_slice("auto", 1) == 1


def test_options_of_a_choice_reach_the_kernel(calls: Calls) -> None:
    q, k, v = _qkv(dim=6)
    attention(q, k, v, backend=AttentionBackendChoice("rec", flavour="x", op=None))
    assert calls[-1][0] == "rec" and calls[-1][2] == {"flavour": "x", "op": None}
    with attention_backend(AttentionBackendChoice("rec", flavour="y")):
        attention(q, k, v, backend="eights")
    assert calls[-1][2] == {"flavour": "y"}


def test_choice_is_its_name() -> None:
    choice = AttentionBackendChoice("sliced", slice_size=1)
    assert choice == "sliced" and {"sliced": 1}[choice] == 1 and str(choice) == "sliced"
    assert repr(choice) == "AttentionBackendChoice('sliced', slice_size=1)"
    import pickle

    again = pickle.loads(pickle.dumps(choice))
    assert again == "sliced" and again.options == {"slice_size": 1}


# -- probes and per-input checks -------------------------------------------------------------------


def test_probe_makes_a_backend_unavailable_with_its_reason(calls: Calls) -> None:
    spec = get_registry().attention_backends["gone"]
    assert spec.available() == "needs a CUDA device; this process has none"
    q, k, v = _qkv()
    with pytest.raises(AttentionBackendError, match=r"'gone'.*not usable here: needs a CUDA device"):
        attention(q, k, v, backend="gone")
    report = plugins_report()
    entry = next(b for p in report["plugins"] for b in p["attention_backends"] if b["name"] == "gone")
    assert entry["available"] is False and entry["unavailable"].startswith("needs a CUDA device")


def test_accepts_refines_the_input_check(calls: Calls) -> None:
    q, k, v = _qkv(dim=6)
    with pytest.raises(AttentionBackendError, match=r"'eights'.*needs head dim % 8"):
        attention(q, k, v, backend="eights")
    q, k, v = _qkv(dim=16)
    attention(q, k, v)
    assert calls[-1][0] == "eights"


# -- peak memory, measured ----------------------------------------------------------------------------

_MEASURE = """
import json, resource, sys, torch
torch.set_num_threads(1)
torch.manual_seed(0)
from difflux.attention import attention, AttentionBackendChoice
q, k, v = (torch.randn(1, 8, 2048, 40) for _ in range(3))
attention(q[:, :, :8], k[:, :, :8], v[:, :, :8], backend="reference")  # warm up allocator and imports


def status(key):
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(key + ":"))


# Reset the peak (VmHWM) to the current RSS, so an earlier transient peak (imports, plugin loading)
# cannot hide this call's; where the kernel refuses, fall back to the lifetime peak.
try:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    before = status("VmRSS")
except OSError:
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
name = sys.argv[1]
backend = AttentionBackendChoice("sliced", slice_size="max", inner="reference") if name == "sliced" else "reference"
out = attention(q, k, v, backend=backend)
after = status("VmHWM")
print(json.dumps({"kib": after - before, "sum": float(out.double().sum())}))
"""


def _peak(name: str) -> dict[str, float]:
    # glibc's dynamic mmap threshold otherwise serves freed 16 MiB blocks from the heap, whose
    # fragmentation made the sliced peak vary from 52 to 150 MiB between runs; a fixed threshold
    # maps every large block and unmaps it on free, so the measured peak is what the code holds.
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072"}
    done = subprocess.run([sys.executable, "-c", _MEASURE, name], capture_output=True, text=True, check=True, env=env)
    return json.loads(done.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def test_slicing_lowers_measured_peak_memory() -> None:
    plain, sliced = _peak("reference"), _peak("sliced")
    # Unsliced, the reference holds (8, 2048, 2048) float32 scores several times (>= 128 MiB
    # each); one head at a time holds 16 MiB per copy.
    assert plain["kib"] >= 128 * 1024
    assert sliced["kib"] <= plain["kib"] / 3
    assert abs(plain["sum"] - sliced["sum"]) <= 1e-3


# -- models and pipelines ---------------------------------------------------------------------------


class _Attn(torch.nn.Module):
    attention_backend: str | None = None

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = torch.nn.Linear(dim, 3 * dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        return attention(q, k, v, backend=self.attention_backend).transpose(1, 2).reshape(b, n, d)


class _Net(ModelMixin):
    def __init__(self) -> None:
        super().__init__()
        self.a = _Attn(16, 4)
        self.b = _Attn(16, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(self.a(x))


class _Single(ModelMixin):
    def __init__(self) -> None:
        super().__init__()
        self.a = _Attn(16, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.a(x)


class _Pipe(DiffusionPipeline):
    def __init__(self, net: _Net, other: ModelMixin) -> None:
        super().__init__()
        self.register_modules(net=net, other=other)


def _net() -> _Net:
    torch.manual_seed(0)
    return _Net()


def test_model_slicing_same_output_and_switches(calls: Calls) -> None:
    net = _net()
    x = torch.randn(2, 12, 16)
    with torch.no_grad():
        plain = net(x)
        net.enable_attention_slicing("max")
        assert net.a.attention_backend == "sliced" and net.a.attention_backend.options == {"slice_size": "max"}
        calls.clear()
        sliced = net(x)
    assert (sliced - plain).abs().max().item() <= 1e-5
    assert {shape[1] for _, shape, _ in calls} == {1}  # one head per inner call
    net.set_attention_slice(2)
    assert net.b.attention_backend.options == {"slice_size": 2}  # type: ignore[union-attr]
    net.disable_attention_slicing()
    assert net.a.attention_backend is None and net.b.attention_backend is None
    net.a.attention_backend = "rec"
    net.disable_attention_slicing()  # leaves a backend chosen otherwise alone
    assert net.a.attention_backend == "rec"


def test_model_slice_size_checked_before_anything_changes(calls: Calls) -> None:
    net = _net()
    with pytest.raises(ValueError, match=r"_Net slice_size=3 is more heads than.*up to 2 fit"):
        net.enable_attention_slicing(3)
    with pytest.raises(ValueError, match="positive int"):
        net.enable_attention_slicing(-1)
    assert net.a.attention_backend is None


def test_pipeline_slicing_and_none_turns_it_off(calls: Calls) -> None:
    pipe = _Pipe(_net(), _net())
    pipe.enable_attention_slicing()
    assert pipe.other.b.attention_backend.options == {"slice_size": "auto"}  # type: ignore[attr-defined]
    with pytest.raises(ValueError, match=r"_Pipe slice_size=3 is more heads.*up to 2 fit"):
        pipe.enable_attention_slicing(3)  # no component has 3 heads in every layer
    one_head = _Pipe(_net(), _Single())
    one_head.enable_attention_slicing(2)  # the single-head model computes its one head whole
    x = torch.randn(1, 3, 16)
    with torch.no_grad():
        sliced = one_head.other(x)  # type: ignore[attr-defined]
        one_head.disable_attention_slicing()
        assert (sliced - one_head.other(x)).abs().max().item() <= 1e-5  # type: ignore[attr-defined]
    with pytest.raises(ValueError, match=r"_Single slice_size=2 is more heads.*up to 1 fit"):
        one_head.other.enable_attention_slicing(2)  # type: ignore[attr-defined]  # model level: refused
    pipe.enable_attention_slicing(None)
    assert pipe.net.a.attention_backend is None  # type: ignore[attr-defined]


def test_set_attention_backend_with_options(calls: Calls) -> None:
    pipe = _Pipe(_net(), _net())
    pipe.set_attention_backend("rec", flavour="z")
    with torch.no_grad():
        pipe.net(torch.randn(1, 3, 16))  # type: ignore[attr-defined]
    assert calls[-1][2] == {"flavour": "z"}


def test_xformers_switch_without_the_plugin_names_the_distribution(calls: Calls) -> None:
    pipe = _Pipe(_net(), _net())
    with pytest.raises(ConfigError, match=r"difflux-attention-xformers\[xformers\]"):
        pipe.enable_xformers_memory_efficient_attention()
    assert pipe.net.a.attention_backend is None  # type: ignore[attr-defined]


def test_xformers_switch_passes_the_op_and_refuses_when_unavailable(clean: pytest.MonkeyPatch) -> None:
    recorded: Calls = []
    reset_registry(extra_plugins=[("fake-xformers", _Recorder(recorded, {"xformers": {"priority": 1}}))])
    pipe = _Pipe(_net(), _net())
    op = object()
    pipe.enable_xformers_memory_efficient_attention(attention_op=op)
    with torch.no_grad():
        pipe.other(torch.randn(1, 3, 16))  # type: ignore[attr-defined]
    assert recorded[-1][0] == "xformers" and recorded[-1][2] == {"attention_op": op}
    pipe.disable_xformers_memory_efficient_attention()
    assert pipe.other.a.attention_backend is None  # type: ignore[attr-defined]

    why = "xformers is not installed: pip install 'difflux-attention-xformers[xformers]'"
    reset_registry(extra_plugins=[("fake-xformers", _Recorder([], {"xformers": {"probe": lambda: why}}))])
    with pytest.raises(ConfigError, match=r"'xformers'.*not usable here: xformers is not installed"):
        pipe.enable_xformers_memory_efficient_attention()
    assert pipe.net.a.attention_backend is None  # type: ignore[attr-defined]


# -- the shared conformance kit, and the GPU ----------------------------------------------------------


class TestSlicedConformance(AttentionBackendConformance):
    """``sliced`` with one head and three queries at a time, on whatever backend runs each slice."""

    backend_name = AttentionBackendChoice(SLICED_BACKEND, slice_size="max", query_chunk_size=3)

    def kernel(self) -> Any:
        return functools.partial(sliced_attention, **self.backend_name.options)


class TestSlicedAutoConformance(AttentionBackendConformance):
    backend_name = SLICED_BACKEND
    dtypes = (torch.float32,)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_slicing_lowers_measured_peak_memory_on_cuda() -> None:
    g = torch.Generator(device="cuda").manual_seed(0)
    q, k, v = (torch.randn(2, 8, 4096, 40, generator=g, device="cuda", dtype=torch.float16) for _ in range(3))

    def peak(backend: str) -> tuple[int, torch.Tensor]:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        out = attention(q, k, v, backend=backend)
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - base, out

    math_peak, plain = peak("reference")  # float32 scores: (2, 8, 4096, 4096) is 1 GiB
    sliced_peak, sliced = peak(AttentionBackendChoice(SLICED_BACKEND, slice_size="max", inner="reference"))
    assert math_peak >= 2**30 and sliced_peak <= math_peak / 4
    assert (plain.float() - sliced.float()).abs().max().item() <= 1e-3


def test_sliced_as_a_context_override_does_not_recurse(calls: Calls) -> None:
    q, k, v = _qkv(dim=6)
    with attention_backend(AttentionBackendChoice(SLICED_BACKEND, slice_size="max")):
        got = attention(q, k, v)
    assert (got - reference_attention(q, k, v)).abs().max().item() <= 1e-6
    assert {name for name, _, _ in calls} == {"rec"} and len(calls) == 2 * 4


def test_chunked_causal_needs_an_inner_backend_that_takes_masks(clean: pytest.MonkeyPatch) -> None:
    recorded: Calls = []
    specs = {"maskless": {"priority": 50, "supports_mask": False}, "masked": {"priority": 1}}
    reset_registry(extra_plugins=[("p", _Recorder(recorded, specs))])
    q, k, v = _qkv(n_q=6, n_k=6)
    got = sliced_attention(q, k, v, None, None, True, slice_size=None, query_chunk_size=4)
    assert {name for name, _, _ in recorded} == {"masked"}  # the chunks carry their part of the causal mask
    assert (got - reference_attention(q, k, v, None, None, True)).abs().max().item() <= 1e-6
    sliced_attention(q, k, v, None, None, True, slice_size="max")
    assert recorded[-1][0] == "maskless"  # whole query rows: the inner backend's own causal mode
    with pytest.raises(AttentionBackendError, match=r"'maskless'.*cannot take these slices.*no attention mask"):
        sliced_attention(q, k, v, None, None, True, query_chunk_size=4, inner="maskless")


def test_cuda_probe_needs_no_torch_where_cuda_is_ruled_out() -> None:
    """``difflux plugins`` lists the CUDA-only backends as unavailable without importing torch."""
    import os

    code = (
        "import sys, io\nfrom difflux.attention_plugins import cuda_reason\nfrom difflux.cli import main\n"
        "why = cuda_reason()\nmain(['plugins'], io.StringIO())\nprint(repr(why), 'torch' in sys.modules)\n"
    )
    plugins = "attention-sdpa,attention-xformers,attention-flash,attention-sage"
    env = {k: v for k, v in os.environ.items() if not k.startswith("DIFFLUX_")} | {"DIFFLUX_LOAD_PLUGINS": plugins}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
    why, imported = done.stdout.strip().rsplit(" ", 1)
    if torch.cuda.is_available():
        assert why == "None"
    elif torch.__version__.endswith("+cpu") or not os.path.exists("/proc/driver/nvidia/version"):
        assert "needs a CUDA device" in why and imported == "False"
    from difflux.attention_plugins import cuda_reason

    assert (cuda_reason() is None) == torch.cuda.is_available()  # with torch imported: torch's own answer
