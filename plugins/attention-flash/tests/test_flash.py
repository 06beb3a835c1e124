"""The flash backend: install/availability on the CPU (flash-attn absent), the kernel against a
stand-in ``flash_attn`` computing with core's reference, and the real FlashAttention-2 against the
reference on a GPU (``gpu`` mark)."""

from __future__ import annotations

import importlib.machinery
import importlib.util
import sys
import types
from typing import Any

import pytest
import torch
from difflux.attention import AttentionBackendError, attention, reference_attention
from difflux.cli import plugins_report
from difflux.errors import ConfigError
from difflux.modeling import ModelMixin
from difflux.registry import get_registry
from difflux.testing import AttentionBackendConformance, IsolatedRegistry
from difflux_attention_flash import BACKEND_NAME, INSTALL
from difflux_attention_flash.kernel import flash_attention

HAS_FLASH = importlib.util.find_spec("flash_attn") is not None


@pytest.fixture
def registry(difflux_registry: IsolatedRegistry) -> None:
    """The installed plugins, in a registry of the test's own."""
    difflux_registry.use(installed=True)


class _Tiny(ModelMixin):
    def __init__(self) -> None:
        super().__init__()
        self.lin = torch.nn.Linear(2, 2)


@pytest.mark.skipif(HAS_FLASH, reason="checks the install without flash-attn")
def test_installs_and_shows_unavailable_with_the_extra(registry: None) -> None:
    spec = get_registry().attention_backends[BACKEND_NAME]
    assert get_registry().plugins[spec.plugin].distribution == "difflux-attention-flash"
    assert (spec.devices, spec.dtypes, spec.supports_mask, spec.max_head_dim) == (
        frozenset({"cuda"}),
        frozenset({"float16", "bfloat16"}),
        False,
        256,
    )
    entry = next(b for p in plugins_report()["plugins"] for b in p["attention_backends"] if b["name"] == BACKEND_NAME)
    assert entry["available"] is False and INSTALL in entry["unavailable"]
    with pytest.raises(ConfigError, match=r"'flash'.*not usable here.*difflux-attention-flash\[flash-attn\]"):
        _Tiny().set_attention_backend(BACKEND_NAME)
    q = torch.randn(1, 2, 3, 8)
    torch.testing.assert_close(attention(q, q, q), reference_attention(q, q, q))  # the others still work


# -- the kernel, against a stand-in flash_attn ---------------------------------------------------


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    calls: list[dict[str, Any]] = []

    def flash_attn_func(
        q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, dropout_p: float = 0.0, softmax_scale: Any = None,
        causal: bool = False,
    ) -> torch.Tensor:  # fmt: skip
        assert q.shape[0] == k.shape[0] and q.shape[2] == k.shape[2], "inputs must be (batch, seq, heads, dim)"
        calls.append({"dropout_p": dropout_p, "softmax_scale": softmax_scale, "causal": causal})
        bq, bk, bv = (t.transpose(1, 2) for t in (q, k, v))
        return reference_attention(bq, bk, bv, None, softmax_scale, causal).transpose(1, 2)

    module = types.ModuleType("flash_attn")
    module.__spec__ = importlib.machinery.ModuleSpec("flash_attn", None)
    module.flash_attn_func = flash_attn_func  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "flash_attn", module)
    return calls


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("scale", [None, 0.2])
def test_kernel_layout_scale_and_causal(fake: list[dict[str, Any]], causal: bool, scale: float | None) -> None:
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 3, 11, 16, generator=g) for _ in range(3))
    got = flash_attention(q, k, v, None, scale, causal)
    assert (got - reference_attention(q, k, v, None, scale, causal)).abs().max().item() <= 1e-6
    assert fake[-1] == {"dropout_p": 0.0, "softmax_scale": scale, "causal": causal}


def test_kernel_refuses_what_flash_attn_would_get_wrong(fake: list[dict[str, Any]]) -> None:
    q, k = torch.randn(1, 2, 4, 8), torch.randn(1, 2, 6, 8)
    with pytest.raises(AttentionBackendError, match=r"bottom-right.*top-left.*got 4 and 6"):
        flash_attention(q, k, k, is_causal=True)
    with pytest.raises(AttentionBackendError, match="takes no attention mask"):
        flash_attention(q, k, k, torch.ones(4, 6, dtype=torch.bool))
    with pytest.raises(AttentionBackendError, match="equal q and v head dims"):
        flash_attention(q, k, torch.randn(1, 2, 6, 4))
    assert fake == []
    flash_attention(q, k, k)  # unequal lengths without causal are fine
    assert fake[-1]["causal"] is False


# -- the real thing, on a GPU ---------------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.skipif(not (torch.cuda.is_available() and HAS_FLASH), reason="needs CUDA and flash-attn")
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("head_dim", [40, 64, 80, 128])
def test_matches_reference_on_cuda(registry: None, dtype: torch.dtype, causal: bool, head_dim: int) -> None:
    g = torch.Generator(device="cuda").manual_seed(1)
    q, k, v = (torch.randn(2, 4, 96, head_dim, generator=g, device="cuda", dtype=dtype) for _ in range(3))
    got = attention(q, k, v, None, None, causal, backend=BACKEND_NAME)
    exact = reference_attention(q.double(), k.double(), v.double(), None, None, causal)
    err = (got.double() - exact).abs().max().item()
    assert got.dtype == dtype and err <= {torch.float16: 3e-3, torch.bfloat16: 2e-2}[dtype], f"{err:.3g}"


@pytest.mark.gpu
@pytest.mark.skipif(not (torch.cuda.is_available() and HAS_FLASH), reason="needs CUDA and flash-attn")
class TestFlashConformance(AttentionBackendConformance):
    backend_name = BACKEND_NAME
    device = "cuda"
    dtypes = (torch.float16, torch.bfloat16)

    @pytest.mark.parametrize(("n_q", "n_k"), [(3, 8), (8, 3), (1, 1)])
    def test_causal_is_top_left_aligned_for_unequal_lengths(self, n_q: int, n_k: int) -> None:
        """flash-attn's causal mode is bottom-right: unequal lengths are refused, equal ones match."""
        q, k, v = self.inputs(2, n_q, n_k, 64, torch.float16)
        if n_q == n_k:
            self.assert_matches_reference(q, k, v, causal=True)
            return
        with pytest.raises(AttentionBackendError, match="bottom-right"):
            attention(q, k, v, None, None, True, backend=self.backend_name)

    def test_value_head_dim_may_differ(self) -> None:
        q, k, v = self.inputs(4, 5, 6, 64, torch.float16, v_dim=128)
        with pytest.raises(AttentionBackendError, match="equal q and v head dims"):
            attention(q, k, v, backend=self.backend_name)
