"""The sage backend: install/availability on the CPU (sageattention absent), the kernel against a
stand-in ``sageattention`` computing with core's reference, and the real SageAttention against the
reference on a GPU (``gpu`` mark; an 8-bit approximation, so a looser tolerance)."""

from __future__ import annotations

import importlib.machinery
import importlib.util
import sys
import types
from typing import Any

import pytest
import torch
from difflux.attention import (
    AttentionBackendError,
    attention,
    available_attention_backends,
    reference_attention,
)
from difflux.cli import plugins_report
from difflux.errors import ConfigError
from difflux.modeling import ModelMixin
from difflux.registry import get_registry
from difflux.testing import AttentionBackendConformance, IsolatedRegistry
from difflux_attention_sage import BACKEND_NAME, INSTALL
from difflux_attention_sage.kernel import accepts, sage_attention

HAS_SAGE = importlib.util.find_spec("sageattention") is not None


@pytest.fixture
def registry(difflux_registry: IsolatedRegistry) -> None:
    """The installed plugins, in a registry of the test's own."""
    difflux_registry.use(installed=True)


class _Tiny(ModelMixin):
    def __init__(self) -> None:
        super().__init__()
        self.lin = torch.nn.Linear(2, 2)


@pytest.mark.skipif(HAS_SAGE, reason="checks the install without sageattention")
def test_installs_and_shows_unavailable_with_the_extra(registry: None) -> None:
    spec = get_registry().attention_backends[BACKEND_NAME]
    assert get_registry().plugins[spec.plugin].distribution == "difflux-attention-sage"
    assert spec.priority < get_registry().attention_backends["reference"].priority  # never automatic
    entry = next(b for p in plugins_report()["plugins"] for b in p["attention_backends"] if b["name"] == BACKEND_NAME)
    assert entry["available"] is False and INSTALL in entry["unavailable"]
    assert BACKEND_NAME not in available_attention_backends()
    with pytest.raises(ConfigError, match=r"'sage'.*not usable here.*difflux-attention-sage\[sageattention\]"):
        _Tiny().set_attention_backend(BACKEND_NAME)
    q = torch.randn(1, 2, 3, 8)
    torch.testing.assert_close(attention(q, q, q), reference_attention(q, q, q))  # the others still work


def test_head_dim_constraint() -> None:
    assert [accepts(torch.empty(1, 1, 1, d, device="meta"), None, False) for d in (64, 96, 128)] == [None] * 3
    assert accepts(torch.empty(1, 1, 1, 80, device="meta"), None, False) == "takes head dims [64, 96, 128], not 80"


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    calls: list[dict[str, Any]] = []

    def sageattn(
        q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, tensor_layout: str = "HND", is_causal: bool = False,
        sm_scale: Any = None,
    ) -> torch.Tensor:  # fmt: skip
        calls.append({"tensor_layout": tensor_layout, "is_causal": is_causal, "sm_scale": sm_scale})
        assert tensor_layout == "HND"
        return reference_attention(q, k, v, None, sm_scale, is_causal)

    module = types.ModuleType("sageattention")
    module.__spec__ = importlib.machinery.ModuleSpec("sageattention", None)
    module.sageattn = sageattn  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "sageattention", module)
    return calls


@pytest.mark.parametrize("causal", [False, True])
def test_kernel_passes_layout_scale_and_causal(fake: list[dict[str, Any]], causal: bool) -> None:
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 3, 9, 64, generator=g) for _ in range(3))
    got = sage_attention(q, k, v, None, 0.1, causal)
    assert (got - reference_attention(q, k, v, None, 0.1, causal)).abs().max().item() <= 1e-6
    assert fake == [{"tensor_layout": "HND", "is_causal": causal, "sm_scale": 0.1}]


def test_kernel_refusals(fake: list[dict[str, Any]]) -> None:
    q, k = torch.randn(1, 2, 4, 64), torch.randn(1, 2, 6, 64)
    with pytest.raises(AttentionBackendError, match="needs seq_q == seq_k"):
        sage_attention(q, k, k, is_causal=True)
    with pytest.raises(AttentionBackendError, match="takes no attention mask"):
        sage_attention(q, k, k, torch.ones(4, 6, dtype=torch.bool))
    assert fake == []


@pytest.mark.gpu
@pytest.mark.skipif(not (torch.cuda.is_available() and HAS_SAGE), reason="needs CUDA and sageattention")
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("head_dim", [64, 128])
def test_matches_reference_on_cuda(registry: None, dtype: torch.dtype, causal: bool, head_dim: int) -> None:
    g = torch.Generator(device="cuda").manual_seed(1)
    q, k, v = (torch.randn(2, 4, 256, head_dim, generator=g, device="cuda", dtype=dtype) for _ in range(3))
    got = attention(q, k, v, None, None, causal, backend=BACKEND_NAME)
    exact = reference_attention(q.double(), k.double(), v.double(), None, None, causal)
    err = (got.double() - exact).abs().max().item()
    assert got.dtype == dtype and err <= 5e-2, f"max abs error {err:.3g}"  # 8-bit q/k: an approximation


@pytest.mark.gpu
@pytest.mark.skipif(not (torch.cuda.is_available() and HAS_SAGE), reason="needs CUDA and sageattention")
class TestSageConformance(AttentionBackendConformance):
    backend_name = BACKEND_NAME
    device = "cuda"
    dtypes = (torch.float16, torch.bfloat16)
    head_dims = (64, 128)
    tolerance = {torch.float16: 5e-2, torch.bfloat16: 5e-2}  # 8-bit q and k: an approximation

    @pytest.mark.parametrize(("n_q", "n_k"), [(3, 8), (8, 3), (1, 1)])
    def test_causal_is_top_left_aligned_for_unequal_lengths(self, n_q: int, n_k: int) -> None:
        q, k, v = self.inputs(2, n_q, n_k, 64, torch.float16)
        if n_q == n_k:
            self.assert_matches_reference(q, k, v, causal=True)
            return
        with pytest.raises(AttentionBackendError, match="seq_q == seq_k"):
            attention(q, k, v, None, None, True, backend=self.backend_name)

    def test_value_head_dim_may_differ(self) -> None:
        q, k, v = self.inputs(4, 5, 6, 64, torch.float16, v_dim=128)
        with pytest.raises(AttentionBackendError, match="equal q and v head dims"):
            attention(q, k, v, backend=self.backend_name)
