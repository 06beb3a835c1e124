"""Attention dispatch: the reference kernel's maths, and which backend runs when.

Backends here are throwaway plugins registered on a registry built with entry-point autoload
off, so these tests do not depend on which plugins are installed.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import torch
from difflux import hookimpl
from difflux.attention import (
    ENV_VAR,
    AttentionBackendError,
    attention,
    attention_backend,
    attention_backend_spec,
    available_attention_backends,
    broken_attention_backends,
    get_attention_backend,
    reference_attention,
    resolve_attention_backend,
    set_attention_backend,
)
from difflux.registry import reset_registry

# -- the reference kernel ----------------------------------------------------------------------


def _loop_attention(
    q: list[list[float]],
    k: list[list[float]],
    v: list[list[float]],
    scale: float,
    keep: Callable[[int, int], bool] = lambda i, j: True,
    bias: Callable[[int, int], float] = lambda i, j: 0.0,
) -> list[list[float]]:
    """Attention for one (batch, head), written with Python floats only: an independent oracle."""
    out = []
    for i, qi in enumerate(q):
        scores = [
            sum(a * b for a, b in zip(qi, kj)) * scale + bias(i, j) if keep(i, j) else -math.inf
            for j, kj in enumerate(k)
        ]
        top = max(scores)
        if top == -math.inf:
            out.append([0.0] * len(v[0]))
            continue
        w = [math.exp(s - top) for s in scores]
        total = sum(w)
        out.append([sum(w[j] * v[j][d] for j in range(len(v))) / total for d in range(len(v[0]))])
    return out


def _t(rows: list[list[float]]) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float64)[None, None]


def test_reference_matches_known_values() -> None:
    # q·k = 0 for every pair, so the weights are uniform and the output is the mean of v.
    q = torch.tensor([[[[1.0, 0.0]]]])
    k = torch.tensor([[[[0.0, 1.0], [0.0, -1.0]]]])
    v = torch.tensor([[[[2.0, 4.0], [6.0, 8.0]]]])
    assert reference_attention(q, k, v).tolist() == [[[[4.0, 6.0]]]]
    # Scores ln(3) and 0 give weights 3/4 and 1/4.
    k = torch.tensor([[[[math.log(3.0), 0.0], [0.0, 0.0]]]], dtype=torch.float64)
    out = reference_attention(q.double(), k, v.double(), scale=1.0)
    assert out.flatten().tolist() == pytest.approx([0.75 * 2 + 0.25 * 6, 0.75 * 4 + 0.25 * 8], abs=1e-12)


@pytest.mark.parametrize("scale", [None, 0.3])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("mask", ["none", "bool", "float"])
def test_reference_matches_a_python_loop(scale: float | None, causal: bool, mask: str) -> None:
    g = torch.Generator().manual_seed(0)
    n_q, n_k, d = 3, 5, 4
    q, k, v = (torch.randn(n, d, generator=g, dtype=torch.float64) for n in (n_q, n_k, n_k))
    keep_mask = torch.rand(n_q, n_k, generator=g) > 0.4
    keep_mask[:, 0] = True
    bias = torch.randn(n_q, n_k, generator=g, dtype=torch.float64)
    attn_mask = {"none": None, "bool": keep_mask, "float": bias}[mask]

    def keep(i: int, j: int) -> bool:
        return (not causal or j <= i) and (mask != "bool" or bool(keep_mask[i, j]))

    def add(i: int, j: int) -> float:
        return float(bias[i, j]) if mask == "float" else 0.0

    expected = _loop_attention(
        q.tolist(), k.tolist(), v.tolist(), scale if scale is not None else 1 / math.sqrt(d), keep, add
    )
    got = reference_attention(q[None, None], k[None, None], v[None, None], attn_mask, scale, causal)
    torch.testing.assert_close(got[0, 0], torch.tensor(expected, dtype=torch.float64), rtol=0, atol=1e-12)


def test_reference_fully_masked_rows_are_zero_and_bool_equals_neg_inf_float() -> None:
    g = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(2, 3, 4, 8, generator=g) for _ in range(3))
    keep = torch.rand(2, 1, 4, 4, generator=g) > 0.5
    keep[..., 2, :] = False  # query row 2 sees nothing
    as_float = torch.zeros(keep.shape).masked_fill(~keep, float("-inf"))
    by_bool = reference_attention(q, k, v, keep)
    torch.testing.assert_close(by_bool, reference_attention(q, k, v, as_float), rtol=0, atol=0)
    assert torch.count_nonzero(by_bool[..., 2, :]) == 0
    assert not torch.isnan(by_bool).any()


def test_reference_causal_equals_a_lower_triangular_mask_and_combines_with_a_mask() -> None:
    g = torch.Generator().manual_seed(2)
    q = torch.randn(1, 2, 4, 8, generator=g)
    k, v = torch.randn(1, 2, 6, 8, generator=g), torch.randn(1, 2, 6, 8, generator=g)
    tril = torch.ones(4, 6, dtype=torch.bool).tril()
    torch.testing.assert_close(reference_attention(q, k, v, is_causal=True), reference_attention(q, k, v, tril))
    extra = torch.rand(4, 6, generator=g) > 0.3
    extra[:, 0] = True
    torch.testing.assert_close(
        reference_attention(q, k, v, extra, is_causal=True), reference_attention(q, k, v, extra & tril)
    )


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_reference_computes_half_inputs_in_float32(dtype: torch.dtype) -> None:
    g = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(1, 2, 5, 16, generator=g).to(dtype) for _ in range(3))
    bias = torch.randn(5, 5, generator=g).to(dtype)
    out = reference_attention(q, k, v, bias)
    assert out.dtype == dtype
    upcast = reference_attention(q.float(), k.float(), v.float(), bias.float())
    assert torch.equal(out, upcast.to(dtype))


# -- dispatch ------------------------------------------------------------------------------------

Calls = list[tuple[str, tuple[Any, ...]]]


class _Backends:
    """A throwaway plugin: backends that record their calls, then compute the reference."""

    def __init__(self, calls: Calls, specs: dict[str, dict[str, Any]]) -> None:
        self.calls = calls
        self.specs = specs

    def _make(self, name: str) -> Callable[..., torch.Tensor]:
        def backend(*args: Any) -> torch.Tensor:
            self.calls.append((name, args[3:]))
            return reference_attention(*args)

        return backend

    @hookimpl
    def difflux_register_attention_backends(self, register: Any) -> None:
        for name, constraints in self.specs.items():
            register(name, self._make(name), **constraints)


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[pytest.MonkeyPatch]:
    monkeypatch.setenv("DIFFLUX_DISABLE_PLUGIN_AUTOLOAD", "1")
    monkeypatch.delenv("DIFFLUX_LOAD_PLUGINS", raising=False)
    monkeypatch.delenv(ENV_VAR, raising=False)
    try:
        yield monkeypatch
    finally:
        set_attention_backend(None)
        reset_registry()  # the next test rebuilds from the restored environment


@pytest.fixture
def calls(clean_env: pytest.MonkeyPatch) -> Calls:
    recorded: Calls = []
    specs: dict[str, dict[str, Any]] = {
        "alpha": {"priority": 10},
        "beta": {"priority": 5},
        "gamma": {"priority": 1},
        "small": {"priority": 50, "max_head_dim": 4},
        "maskless": {"priority": 20, "supports_mask": False},
        "ghost": {"priority": 99, "requires": ["difflux_no_such_module_for_tests"]},
    }
    reset_registry(extra_plugins=[("throwaway-backends", _Backends(recorded, specs))])
    return recorded


def _qkv(head_dim: int = 8, dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(4)
    return tuple(torch.randn(1, 2, 3, head_dim, generator=g).to(dtype) for _ in range(3))  # type: ignore[return-value]


def _ran(calls: Calls) -> str:
    assert calls, "no backend ran"
    return calls.pop()[0]


def test_automatic_selection_is_highest_priority_usable_backend(calls: Calls) -> None:
    q, k, v = _qkv(head_dim=8)
    out = attention(q, k, v)
    # ghost (99) is unavailable, small (50) rejects head dim 8, maskless (20) is fine without a mask.
    assert _ran(calls) == "maskless"
    torch.testing.assert_close(out, reference_attention(q, k, v))
    attention(q, k, v, torch.ones(3, 3, dtype=torch.bool))
    assert _ran(calls) == "alpha"
    q4, k4, v4 = _qkv(head_dim=4)
    attention(q4, k4, v4)
    assert _ran(calls) == "small"
    assert available_attention_backends() == ["small", "maskless", "alpha", "beta", "gamma", "reference", "sliced"]
    assert resolve_attention_backend(q4) == "small"
    assert resolve_attention_backend(q, torch.ones(3, 3)) == "alpha"


def test_arguments_reach_the_backend_unchanged(calls: Calls) -> None:
    q, k, v = _qkv()
    mask = torch.zeros(3, 3)
    out = attention(q, k, v, mask, 0.25, True, backend="beta")
    name, (got_mask, got_scale, got_causal) = calls.pop()
    assert (name, got_scale, got_causal) == ("beta", 0.25, True)
    assert got_mask is mask
    torch.testing.assert_close(out, reference_attention(q, k, v, mask, 0.25, True))


def test_precedence_context_over_call_over_process_default_over_auto(calls: Calls) -> None:
    q, k, v = _qkv()
    set_attention_backend("beta")
    assert get_attention_backend() == "beta"
    attention(q, k, v)
    assert _ran(calls) == "beta"
    attention(q, k, v, backend="gamma")
    assert _ran(calls) == "gamma"
    with attention_backend("alpha"):
        assert get_attention_backend() == "alpha"
        attention(q, k, v, backend="gamma")
        assert _ran(calls) == "alpha"
        with attention_backend("reference"):
            attention(q, k, v)
            assert calls == []  # reference is not a recording backend
        with attention_backend(None):  # lifts the outer override
            attention(q, k, v, backend="gamma")
            assert _ran(calls) == "gamma"
        attention(q, k, v)
        assert _ran(calls) == "alpha"
    attention(q, k, v)
    assert _ran(calls) == "beta"
    set_attention_backend(None)
    assert get_attention_backend() is None
    attention(q, k, v)
    assert _ran(calls) == "maskless"


def test_context_override_is_per_thread(calls: Calls) -> None:
    q, k, v = _qkv()
    seen: list[str | None] = []

    def worker() -> None:
        seen.append(get_attention_backend())
        attention(q, k, v)

    with attention_backend("gamma"):
        t = threading.Thread(target=worker)
        t.start()
        t.join()
        attention(q, k, v)
    assert seen == [None]
    assert [name for name, _ in calls] == ["maskless", "gamma"]


def test_environment_variable_sets_the_process_default(calls: Calls, clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv(ENV_VAR, "gamma")
    set_attention_backend(None)  # re-reads the environment
    assert get_attention_backend() == "gamma"
    q, k, v = _qkv()
    attention(q, k, v)
    assert _ran(calls) == "gamma"
    set_attention_backend("beta")  # an explicit choice beats the variable ...
    attention(q, k, v)
    assert _ran(calls) == "beta"
    set_attention_backend(None)
    clean_env.setenv(ENV_VAR, "alpha")  # ... and the variable is read again when the registry is rebuilt
    reset_registry(extra_plugins=[("throwaway-backends", _Backends(calls, {"alpha": {}}))])
    attention(q, k, v)
    assert _ran(calls) == "alpha"


def test_environment_variable_naming_an_unknown_backend_is_an_error(
    calls: Calls, clean_env: pytest.MonkeyPatch
) -> None:
    clean_env.setenv(ENV_VAR, "nope")
    with pytest.raises(AttentionBackendError, match=rf"'nope' \(from the environment variable {ENV_VAR}\)"):
        set_attention_backend(None)
    clean_env.delenv(ENV_VAR)


@pytest.mark.parametrize(
    "select",
    [
        lambda q: attention(q, q, q, backend="nope"),
        lambda q: set_attention_backend("nope"),
        lambda q: attention_backend("nope").__enter__(),
        lambda q: attention_backend_spec("nope"),
    ],
    ids=["call", "process", "context", "spec"],
)
def test_unknown_backend_names_list_the_registered_ones(calls: Calls, select: Callable[[torch.Tensor], Any]) -> None:
    with pytest.raises(AttentionBackendError, match="unknown attention backend 'nope'") as info:
        select(_qkv()[0])
    assert "alpha, beta, gamma, ghost, maskless, reference, sliced, small" in str(info.value)
    assert isinstance(info.value, ValueError)
    assert get_attention_backend() is None


@pytest.mark.parametrize(
    ("name", "head_dim", "dtype", "mask", "message"),
    [
        ("small", 8, torch.float32, None, "head dim up to 4, not 8"),
        ("maskless", 4, torch.float32, torch.ones(3, 3, dtype=torch.bool), "takes no attention mask"),
    ],
)
def test_explicit_backend_rejecting_inputs_names_backend_and_constraint(
    calls: Calls, name: str, head_dim: int, dtype: torch.dtype, mask: torch.Tensor | None, message: str
) -> None:
    q, k, v = _qkv(head_dim, dtype)

    def in_context() -> None:
        with attention_backend(name):
            attention(q, k, v, mask)

    for run in (lambda: attention(q, k, v, mask, backend=name), in_context):
        with pytest.raises(AttentionBackendError, match=rf"attention backend '{name}'.*{message}"):
            run()
    assert calls == []  # never silently fell back to another backend


def test_explicit_unavailable_backend_says_why(calls: Calls) -> None:
    q, k, v = _qkv()
    with pytest.raises(AttentionBackendError, match=r"'ghost'.*not usable.*difflux_no_such_module_for_tests"):
        attention(q, k, v, backend="ghost")


def test_constraints_on_device_and_dtype(clean_env: pytest.MonkeyPatch) -> None:
    recorded: Calls = []
    specs = {"cuda-only": {"priority": 30, "devices": ["cuda"]}, "f16": {"priority": 20, "dtypes": [torch.float16]}}
    reset_registry(extra_plugins=[("p", _Backends(recorded, specs))])
    q, k, v = _qkv()
    attention(q, k, v)  # cpu float32: neither fits
    assert recorded == []
    attention(q.half(), k.half(), v.half())
    assert _ran(recorded) == "f16"
    with pytest.raises(AttentionBackendError, match=r"'cuda-only'.*runs on \['cuda'\], not cpu"):
        attention(q, k, v, backend="cuda-only")
    with pytest.raises(AttentionBackendError, match=r"'f16'.*takes dtypes \['float16'\], not torch.float32"):
        attention(q, k, v, backend="f16")


def test_constrained_backends_fall_through_to_the_reference(clean_env: pytest.MonkeyPatch) -> None:
    recorded: Calls = []
    reset_registry(extra_plugins=[("p", _Backends(recorded, {"only-cuda": {"priority": 5, "devices": ["cuda"]}}))])
    q, k, v = _qkv()
    assert resolve_attention_backend(q) == "reference"
    torch.testing.assert_close(attention(q, k, v), reference_attention(q, k, v))
    assert recorded == []


def test_lazy_reference_is_imported_once_and_cache_follows_registry_resets(clean_env: pytest.MonkeyPatch) -> None:
    class Lazy:
        @hookimpl
        def difflux_register_attention_backends(self, register: Any) -> None:
            register("lazy-ref", "difflux.attention:reference_attention", priority=500)

    reset_registry(extra_plugins=[("lazy", Lazy())])
    from difflux.registry import get_registry

    spec = get_registry().attention_backends["lazy-ref"]
    assert spec.ref == "difflux.attention:reference_attention"  # not resolved at registration
    q, k, v = _qkv()
    torch.testing.assert_close(attention(q, k, v), reference_attention(q, k, v))
    assert spec.ref is reference_attention
    assert resolve_attention_backend(q) == "lazy-ref"
    reset_registry(extra_plugins=[])
    assert "lazy-ref" not in available_attention_backends()
    assert resolve_attention_backend(q) == "reference"


# -- a backend that fails: automatic selection falls back, an explicit choice raises -------------

BROKEN_REFS = {
    "missing module": "difflux_no_such_module_for_tests.kernels:attn",
    "missing attribute": "difflux.attention:no_such_kernel_for_tests",
    "not a function": "difflux.attention:ENV_VAR",
}


def _raising(exc: BaseException) -> Callable[..., torch.Tensor]:
    def kernel(*args: Any) -> torch.Tensor:
        raise exc

    return kernel


class _Failing:
    def __init__(self, ref: Any) -> None:
        self.ref = ref

    @hookimpl
    def difflux_register_attention_backends(self, register: Any) -> None:
        register("shaky", self.ref, priority=500)
        register("steady", reference_attention, priority=400)


def _failures(ref_id: str) -> Any:
    return BROKEN_REFS[ref_id] if ref_id in BROKEN_REFS else _raising(RuntimeError("kernel exploded\non two lines"))


@pytest.mark.parametrize("how", [*BROKEN_REFS, "raises on first call"])
def test_automatic_selection_drops_a_failing_backend_with_one_log_line_and_falls_back(
    clean_env: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, how: str
) -> None:
    reset_registry(extra_plugins=[("shaky-plugin", _Failing(_failures(how)))])
    q, k, v = _qkv()
    with caplog.at_level(logging.WARNING, logger="difflux"):
        out = attention(q, k, v)
        again = attention(q, k, v)
    torch.testing.assert_close(out, reference_attention(q, k, v))
    torch.testing.assert_close(again, out)
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1 and "\n" not in lines[0], lines
    assert "'shaky' (plugin 'shaky-plugin')" in lines[0] and "falls back" in lines[0]
    assert list(broken_attention_backends()) == ["shaky"]
    assert "shaky" not in available_attention_backends()
    assert resolve_attention_backend(q) == "steady"


@pytest.mark.parametrize("how", [*BROKEN_REFS, "raises on first call"])
def test_an_explicitly_chosen_backend_that_fails_raises_naming_it(clean_env: pytest.MonkeyPatch, how: str) -> None:
    reset_registry(extra_plugins=[("shaky-plugin", _Failing(_failures(how)))])
    q, k, v = _qkv()
    with pytest.raises(AttentionBackendError, match=r"'shaky' \(plugin 'shaky-plugin'\)"), attention_backend("shaky"):
        attention(q, k, v)
    with pytest.raises(AttentionBackendError, match=r"'shaky' \(plugin 'shaky-plugin'\)") as info:
        attention(q, k, v, backend="shaky")
    assert "\n" not in str(info.value)
    if how == "raises on first call":
        assert "failed on its first call: RuntimeError: kernel exploded on two lines" in str(info.value)
        assert isinstance(info.value.__cause__, RuntimeError)
    assert broken_attention_backends() == {}  # an explicit choice never drops a backend


def test_inputs_every_backend_refuses_raise_the_first_error_and_drop_nothing(clean_env: pytest.MonkeyPatch) -> None:
    reset_registry(extra_plugins=[("shaky-plugin", _Failing(_raising(RuntimeError("first"))))])
    q, k, v = _qkv()
    with pytest.raises(RuntimeError, match="first"):
        attention(q, k[..., :3], v)  # mismatched head dims: the reference fails too
    assert broken_attention_backends() == {}
    assert available_attention_backends()[:2] == ["shaky", "steady"]


def test_a_backend_that_worked_once_keeps_its_own_errors(clean_env: pytest.MonkeyPatch) -> None:
    calls: list[int] = []

    def flaky(*args: Any) -> torch.Tensor:
        calls.append(1)
        if len(calls) > 1:
            raise ValueError("second call fails")
        return reference_attention(*args)

    reset_registry(extra_plugins=[("flaky-plugin", _Failing(flaky))])
    q, k, v = _qkv()
    attention(q, k, v)
    with pytest.raises(ValueError, match="second call fails"):
        attention(q, k, v)
    assert broken_attention_backends() == {}


def test_running_out_of_memory_does_not_drop_a_backend(clean_env: pytest.MonkeyPatch) -> None:
    reset_registry(extra_plugins=[("oom-plugin", _Failing(_raising(torch.OutOfMemoryError("out of memory"))))])
    q, k, v = _qkv()
    with pytest.raises(torch.OutOfMemoryError):
        attention(q, k, v)
    assert broken_attention_backends() == {}


def test_dropped_backends_come_back_with_a_new_registry(clean_env: pytest.MonkeyPatch) -> None:
    plugin = _Failing(BROKEN_REFS["missing module"])
    reset_registry(extra_plugins=[("shaky-plugin", plugin)])
    q, k, v = _qkv()
    attention(q, k, v)
    assert "shaky" in broken_attention_backends()
    reset_registry(extra_plugins=[("shaky-plugin", plugin)])
    assert broken_attention_backends() == {}
    assert available_attention_backends()[0] == "shaky"
