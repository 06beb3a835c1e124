"""The xformers backend: install/availability logic on the CPU (xFormers absent), the kernel's
layout, bias and operator handling against a stand-in ``xformers.ops`` that computes with core's
reference, and the real xFormers against the reference on a GPU (``gpu`` mark)."""

from __future__ import annotations

import importlib.machinery
import io
import sys
import types
from typing import Any

import pytest
import torch
from difflux.attention import (
    AttentionBackendError,
    attention,
    attention_backend,
    reference_attention,
)
from difflux.cli import main, plugins_report
from difflux.errors import ConfigError
from difflux.modeling import ModelMixin
from difflux.registry import get_registry, reset_registry
from difflux.testing import AttentionBackendConformance, IsolatedRegistry
from difflux_attention_xformers import BACKEND_NAME, INSTALL
from difflux_attention_xformers.kernel import aligned_bias, xformers_attention
from difflux_attention_xformers.plugin import unavailable_reason

HAS_XFORMERS = importlib.util.find_spec("xformers") is not None


@pytest.fixture
def registry(difflux_registry: IsolatedRegistry, monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """The installed plugins, in a registry of the test's own."""
    difflux_registry.use(installed=True)
    return monkeypatch


class _Attn(torch.nn.Module):
    attention_backend: str | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q = x.view(x.shape[0], x.shape[1], 2, -1).transpose(1, 2)
        return attention(q, q, q, backend=self.attention_backend).transpose(1, 2).flatten(2)


class _Net(ModelMixin):
    def __init__(self) -> None:
        super().__init__()
        self.attn = _Attn()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.attn(x)


# -- without xFormers (this machine) -------------------------------------------------------------


@pytest.mark.skipif(HAS_XFORMERS, reason="checks the install without xFormers")
def test_installs_and_shows_unavailable_with_the_extra(registry: pytest.MonkeyPatch) -> None:
    spec = get_registry().attention_backends[BACKEND_NAME]
    assert spec.plugin == "attention-xformers"
    assert registry and get_registry().plugins["attention-xformers"].distribution == "difflux-attention-xformers"
    why = spec.available()
    assert why == unavailable_reason() and INSTALL in (why or "")
    entry = next(b for p in plugins_report()["plugins"] for b in p["attention_backends"] if b["name"] == BACKEND_NAME)
    assert entry["available"] is False and "difflux-attention-xformers[xformers]" in entry["unavailable"]
    text = io.StringIO()
    assert main(["plugins"], text) == 0  # what `difflux plugins` prints
    line = next(ln for ln in text.getvalue().splitlines() if "attention backend  xformers" in ln)
    assert "devices cuda" in line and f"UNAVAILABLE: {why}" in line
    net = _Net()
    with pytest.raises(ConfigError, match=r"'xformers'.*not usable here.*difflux-attention-xformers\[xformers\]"):
        net.enable_xformers_memory_efficient_attention()
    assert net.attn.attention_backend is None
    q = torch.randn(1, 2, 3, 4)
    with pytest.raises(AttentionBackendError, match=r"'xformers'.*(not usable here|runs on \['cuda'\], not cpu)"):
        attention(q, q, q, backend=BACKEND_NAME)
    with pytest.raises(AttentionBackendError, match=r"pip install 'difflux-attention-xformers\[xformers\]'"):
        xformers_attention(q, q, q)
    x = torch.randn(1, 3, 8)  # the other backends are untouched: sdpa runs, equal to the reference
    with attention_backend("reference"):
        want = net(x)
    torch.testing.assert_close(net(x), want)


# -- the kernel, against a stand-in xformers.ops ----------------------------------------------------


class _LowerTriangularMask:
    pass


def _fake_xformers(calls: list[dict[str, Any]]) -> tuple[types.ModuleType, types.ModuleType]:
    """``xformers`` / ``xformers.ops`` computing with the reference, checking what the real one checks."""

    def memory_efficient_attention(
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        attn_bias: Any = None,
        p: float = 0.0,
        scale: float | None = None,
        *,
        op: Any = None,
    ) -> torch.Tensor:
        b, m, h, _ = query.shape
        assert key.shape[:1] == (b,) and key.shape[2] == h, "inputs must be (batch, seq, heads, dim)"
        calls.append({"op": op, "bias": attn_bias, "scale": scale})
        mask, causal = None, False
        if isinstance(attn_bias, _LowerTriangularMask):
            causal = True
        elif attn_bias is not None:
            assert attn_bias.shape == (b, h, m, key.shape[1]) and attn_bias.dtype == query.dtype
            assert attn_bias.stride(-2) % 8 == 0 or attn_bias.stride(-2) == 0, "bias rows must be 8-aligned"
            mask = attn_bias
        if op == "refuse":
            raise NotImplementedError("No operator found for `memory_efficient_attention_forward` with inputs: ...")
        out = reference_attention(
            query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2), mask, scale, causal
        )
        return out.transpose(1, 2)

    pkg = types.ModuleType("xformers")
    pkg.__spec__ = importlib.machinery.ModuleSpec("xformers", None, is_package=True)
    ops = types.ModuleType("xformers.ops")
    ops.memory_efficient_attention = memory_efficient_attention  # type: ignore[attr-defined]
    ops.LowerTriangularMask = _LowerTriangularMask  # type: ignore[attr-defined]
    pkg.ops = ops  # type: ignore[attr-defined]
    return pkg, ops


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    calls: list[dict[str, Any]] = []
    pkg, ops = _fake_xformers(calls)
    monkeypatch.setitem(sys.modules, "xformers", pkg)
    monkeypatch.setitem(sys.modules, "xformers.ops", ops)
    return calls


def _inputs(seed: int, n_q: int = 7, n_k: int = 13, dim: int = 8, dtype: torch.dtype = torch.float32) -> Any:
    g = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(2, 3, n, dim, generator=g).to(dtype) for n in (n_q, n_k, n_k))


@pytest.mark.parametrize("mask_kind", ["none", "bool", "float", "float-2d"])
@pytest.mark.parametrize("causal", [False, True])
def test_kernel_layout_bias_and_causal(fake: list[dict[str, Any]], mask_kind: str, causal: bool) -> None:
    q, k, v = _inputs(0)
    g = torch.Generator().manual_seed(3)
    keep = torch.rand(2, 1, 7, 13, generator=g) > 0.3
    keep[..., 0] = True
    mask = {
        "none": None,
        "bool": keep,
        "float": torch.randn(2, 1, 7, 13, generator=g).masked_fill(~keep, float("-inf")),
        "float-2d": torch.randn(7, 13, generator=g),
    }[mask_kind]
    got = xformers_attention(q, k, v, mask, 0.4, causal)
    want = reference_attention(q, k, v, mask, 0.4, causal)
    assert got.shape == want.shape and (got - want).abs().max().item() <= 1e-6
    bias = fake[-1]["bias"]
    if mask is None:
        assert isinstance(bias, _LowerTriangularMask) if causal else bias is None
    assert fake[-1]["scale"] == 0.4 and fake[-1]["op"] is None


def test_attention_op_passes_through_and_refusal_is_clear(fake: list[dict[str, Any]]) -> None:
    q, k, v = _inputs(1)
    op = ("FwOp", "BwOp")
    xformers_attention(q, k, v, attention_op=op)
    assert fake[-1]["op"] is op
    with pytest.raises(AttentionBackendError, match=r"'xformers': xFormers has no operator.*op 'refuse'.*No operator"):
        xformers_attention(q, k, v, attention_op="refuse")


def test_aligned_bias_pads_storage_not_shape() -> None:
    bias = torch.randn(1, 1, 5, 13)
    out = aligned_bias(bias, (2, 3, 5, 13))
    assert out.shape == (2, 3, 5, 13) and out.stride(-2) == 16 and out.stride(0) == 0
    assert torch.equal(out[1, 2], bias[0, 0])


def test_enabled_on_models_with_the_op_and_refuses_cpu_inputs(
    fake: list[dict[str, Any]], registry: pytest.MonkeyPatch
) -> None:
    import difflux_attention_xformers.plugin as plugin

    registry.setattr(plugin, "cuda_reason", lambda: None)  # pretend a GPU: availability only
    reset_registry()
    net = _Net()
    net.enable_xformers_memory_efficient_attention(attention_op="my-op")
    assert net.attn.attention_backend == BACKEND_NAME
    assert net.attn.attention_backend.options == {"attention_op": "my-op"}  # type: ignore[attr-defined]
    with pytest.raises(AttentionBackendError, match=r"'xformers'.*runs on \['cuda'\], not cpu"):
        net(torch.randn(1, 3, 8))
    net.disable_xformers_memory_efficient_attention()
    assert net.attn.attention_backend is None
    assert net(torch.randn(1, 3, 8)).shape == (1, 3, 8)


# -- the real thing, on a GPU ---------------------------------------------------------------------

GPU_TOLERANCE = {torch.float32: 2e-3, torch.float16: 3e-3, torch.bfloat16: 2e-2}


@pytest.mark.gpu
@pytest.mark.skipif(not (torch.cuda.is_available() and HAS_XFORMERS), reason="needs CUDA and xFormers")
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
@pytest.mark.parametrize("mask_kind", ["none", "bool", "float"])
@pytest.mark.parametrize("causal", [False, True])
def test_matches_reference_on_cuda(
    registry: pytest.MonkeyPatch, dtype: torch.dtype, mask_kind: str, causal: bool
) -> None:
    q, k, v = (t.cuda() for t in _inputs(5, 77, 64, 64, dtype))
    mask = None
    if mask_kind != "none":
        keep = torch.rand(2, 1, 77, 64, device="cuda") > 0.3
        keep[..., 0] = True
        mask = (
            keep if mask_kind == "bool" else torch.randn(2, 1, 77, 64, device="cuda").masked_fill(~keep, -1e4).to(dtype)
        )
    got = attention(q, k, v, mask, None, causal, backend=BACKEND_NAME)
    wide = mask.double() if mask is not None and mask.dtype != torch.bool else mask
    exact = reference_attention(q.double(), k.double(), v.double(), wide, None, causal)
    err = (got.double() - exact).abs().max().item()
    assert got.dtype == dtype and err <= GPU_TOLERANCE[dtype], f"max abs error {err:.3g}"


@pytest.mark.gpu
@pytest.mark.skipif(not (torch.cuda.is_available() and HAS_XFORMERS), reason="needs CUDA and xFormers")
def test_attention_op_reaches_xformers_on_cuda(registry: pytest.MonkeyPatch) -> None:
    from xformers.ops import MemoryEfficientAttentionCutlassOp

    net = _Net().cuda().half()
    net.enable_xformers_memory_efficient_attention(attention_op=MemoryEfficientAttentionCutlassOp)
    x = torch.randn(2, 64, 128, device="cuda", dtype=torch.float16)
    got = net(x)
    net.disable_xformers_memory_efficient_attention()
    torch.testing.assert_close(got, net(x), atol=3e-3, rtol=0)


def test_rows_that_see_no_key_are_zero(fake: list[dict[str, Any]]) -> None:
    q, k, v = _inputs(2, n_q=4, n_k=4)
    keep = torch.ones(4, 4, dtype=torch.bool)
    keep[2] = False
    got = xformers_attention(q, k, v, keep)
    assert torch.count_nonzero(got[..., 2, :]) == 0 and torch.isfinite(got).all()
    torch.testing.assert_close(got, reference_attention(q, k, v, keep))


@pytest.mark.gpu
@pytest.mark.skipif(not (torch.cuda.is_available() and HAS_XFORMERS), reason="needs CUDA and xFormers")
class TestXformersConformance(AttentionBackendConformance):
    backend_name = BACKEND_NAME
    device = "cuda"
