"""The sdpa backend against core's reference backend, and its place as the automatic default."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
import torch.nn.functional as F
from difflux.attention import (
    ENV_VAR,
    attention,
    attention_backend,
    available_attention_backends,
    reference_attention,
    resolve_attention_backend,
    set_attention_backend,
)
from difflux.registry import get_registry, reset_registry
from difflux.testing import AttentionBackendConformance
from difflux_attention_sdpa import BACKEND_NAME, PRIORITY
from difflux_attention_sdpa.kernel import sdpa_attention

# Max abs error allowed against the reference computed in float64 on the same (rounded) inputs.
TOLERANCE = {torch.float64: 1e-12, torch.float32: 2e-6, torch.float16: 2e-3, torch.bfloat16: 2e-2}


def _inputs(
    seed: int, n_q: int, n_k: int, head_dim: int, dtype: torch.dtype, v_dim: int | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(2, 3, n_q, head_dim, generator=g)
    k = torch.randn(2, 3, n_k, head_dim, generator=g)
    v = torch.randn(2, 3, n_k, v_dim or head_dim, generator=g)
    return q.to(dtype), k.to(dtype), v.to(dtype)


def _mask(kind: str, shape: tuple[int, ...], dtype: torch.dtype, seed: int) -> torch.Tensor | None:
    g = torch.Generator().manual_seed(seed + 100)
    if kind == "none":
        return None
    keep = torch.rand(shape, generator=g) > 0.4
    keep[..., 0] = True  # every query row sees at least one key
    if kind == "bool":
        return keep
    bias = torch.randn(shape, generator=g).masked_fill(~keep, float("-inf"))
    return bias.to(dtype)


def _check(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor | None = None,
    scale: float | None = None,
    causal: bool = False,
) -> None:
    got = sdpa_attention(q, k, v, mask, scale, causal)
    assert got.dtype == q.dtype and got.shape == (*q.shape[:-1], v.shape[-1])
    wide = None if mask is None or mask.dtype == torch.bool else mask.double()
    exact = reference_attention(q.double(), k.double(), v.double(), wide if wide is not None else mask, scale, causal)
    err = (got.double() - exact).abs().max().item()
    assert err <= TOLERANCE[q.dtype], f"max abs error {err:.3g} over {TOLERANCE[q.dtype]:.3g}"
    # The reference backend, at the input dtype, lands within the same tolerance.
    ref = reference_attention(q, k, v, mask, scale, causal)
    assert (ref.double() - exact).abs().max().item() <= TOLERANCE[q.dtype]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64])
@pytest.mark.parametrize("mask_kind", ["none", "bool", "float"])
@pytest.mark.parametrize("causal", [False, True])
def test_matches_reference_over_masks_causal_and_dtypes(dtype: torch.dtype, mask_kind: str, causal: bool) -> None:
    q, k, v = _inputs(0, 5, 7, 16, dtype)
    _check(q, k, v, _mask(mask_kind, (2, 1, 5, 7), dtype, 0), causal=causal)


@pytest.mark.parametrize("head_dim", [1, 3, 7, 33, 80, 129])
def test_matches_reference_for_odd_head_dims(head_dim: int) -> None:
    q, k, v = _inputs(head_dim, 4, 6, head_dim, torch.float32)
    _check(q, k, v)
    _check(q, k, v, _mask("bool", (4, 6), torch.float32, head_dim))


@pytest.mark.parametrize("scale", [0.05, 1.0, 3.0])
def test_matches_reference_with_explicit_scale(scale: float) -> None:
    q, k, v = _inputs(1, 4, 4, 8, torch.float32)
    _check(q, k, v, scale=scale)
    _check(q, k, v, _mask("float", (4, 4), torch.float32, 1), scale=scale, causal=True)


@pytest.mark.parametrize(("n_q", "n_k"), [(3, 8), (8, 3), (1, 1)])
def test_causal_with_unequal_lengths_is_top_left_aligned(n_q: int, n_k: int) -> None:
    q, k, v = _inputs(2, n_q, n_k, 8, torch.float32)
    _check(q, k, v, causal=True)


@pytest.mark.parametrize("shape", [(5, 7), (2, 1, 5, 7), (2, 3, 5, 7), (1, 3, 1, 7)])
def test_mask_broadcasting(shape: tuple[int, ...]) -> None:
    q, k, v = _inputs(3, 5, 7, 8, torch.float32)
    _check(q, k, v, _mask("bool", shape, torch.float32, 3))
    _check(q, k, v, _mask("float", shape, torch.float32, 3))


def test_value_head_dim_may_differ() -> None:
    q, k, v = _inputs(4, 5, 6, 8, torch.float32, v_dim=12)
    _check(q, k, v, _mask("bool", (5, 6), torch.float32, 4), causal=True)


def test_float_mask_in_another_dtype_and_fully_masked_rows() -> None:
    q, k, v = _inputs(5, 4, 4, 8, torch.bfloat16)
    bias = torch.zeros(4, 4)  # float32 mask with bf16 inputs: cast, as the reference does
    bias[2] = float("-inf")
    got = sdpa_attention(q, k, v, bias)
    assert torch.count_nonzero(got[..., 2, :]) == 0
    _check(q, k, v, bias.to(torch.bfloat16))
    torch.testing.assert_close(got, reference_attention(q, k, v, bias), atol=2e-2, rtol=0)


# -- registration and automatic selection --------------------------------------------------------


@pytest.fixture
def fresh_registry(monkeypatch: pytest.MonkeyPatch) -> Iterator[pytest.MonkeyPatch]:
    for var in ("DIFFLUX_LOAD_PLUGINS", "DIFFLUX_DISABLE_PLUGIN_AUTOLOAD", ENV_VAR):
        monkeypatch.delenv(var, raising=False)
    reset_registry()
    try:
        yield monkeypatch
    finally:
        set_attention_backend(None)
        reset_registry()


def test_registered_lazily_above_the_reference(fresh_registry: pytest.MonkeyPatch) -> None:
    registry = get_registry()
    spec = registry.attention_backends[BACKEND_NAME]
    assert spec.plugin == "attention-sdpa"
    assert registry.plugins["attention-sdpa"].distribution == "difflux-attention-sdpa"
    assert spec.priority == PRIORITY > registry.attention_backends["reference"].priority
    assert spec.check(torch.empty(1, 1, 1, 512, dtype=torch.float16), torch.ones(1, dtype=torch.bool), True) is None


def test_is_the_automatic_default_and_really_runs_sdpa(fresh_registry: pytest.MonkeyPatch) -> None:
    q, k, v = _inputs(6, 3, 3, 8, torch.float32)
    assert available_attention_backends()[0] == BACKEND_NAME
    assert resolve_attention_backend(q, torch.ones(3, 3, dtype=torch.bool), True) == BACKEND_NAME
    seen: list[torch.Tensor] = []
    real = F.scaled_dot_product_attention

    def spy(*args: object, **kwargs: object) -> torch.Tensor:
        seen.append(args[0])  # type: ignore[arg-type]
        return real(*args, **kwargs)  # type: ignore[arg-type]

    fresh_registry.setattr(F, "scaled_dot_product_attention", spy)
    out = attention(q, k, v)
    assert len(seen) == 1 and seen[0] is q
    torch.testing.assert_close(out, reference_attention(q, k, v))
    with attention_backend("reference"):
        attention(q, k, v)
    assert len(seen) == 1


def test_alone_it_is_still_the_default(fresh_registry: pytest.MonkeyPatch) -> None:
    fresh_registry.setenv("DIFFLUX_LOAD_PLUGINS", "attention-sdpa")
    reset_registry()
    assert set(get_registry().plugins) == {"difflux", "attention-sdpa"}
    usable = available_attention_backends()
    assert usable[0] == BACKEND_NAME and usable[-2:] == ["reference", "sliced"]
    assert set(usable) - {"sdpa-efficient", "sdpa-cudnn"} == {
        BACKEND_NAME,
        "sdpa-flash",
        "sdpa-math",
        "flex",
        *usable[-2:],
    }


def test_without_the_plugin_the_reference_is_the_default(fresh_registry: pytest.MonkeyPatch) -> None:
    fresh_registry.setenv("DIFFLUX_DISABLE_PLUGIN_AUTOLOAD", "1")
    reset_registry()
    q = torch.zeros(1, 1, 2, 4)
    assert BACKEND_NAME not in get_registry().attention_backends
    assert resolve_attention_backend(q) == "reference"


# -- on a GPU (fused kernels: flash, memory-efficient, cuDNN) ------------------------------------

GPU_TOLERANCE = {torch.float32: 1e-3, torch.float16: 3e-3, torch.bfloat16: 2e-2}


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
@pytest.mark.parametrize("mask_kind", ["none", "bool", "float"])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("head_dim", [64, 80, 128])
def test_matches_reference_on_cuda(dtype: torch.dtype, mask_kind: str, causal: bool, head_dim: int) -> None:
    q, k, v = (t.cuda() for t in _inputs(7, 33, 47, head_dim, dtype))
    mask = _mask(mask_kind, (2, 1, 33, 47), dtype, 7)
    mask = mask.cuda() if mask is not None else None
    got = sdpa_attention(q, k, v, mask, None, causal)
    wide = mask.double() if mask is not None and mask.dtype != torch.bool else mask
    exact = reference_attention(q.double(), k.double(), v.double(), wide, None, causal)
    err = (got.double() - exact).abs().max().item()
    assert got.device.type == "cuda" and got.dtype == dtype
    assert err <= GPU_TOLERANCE[dtype], f"max abs error {err:.3g}"


# -- the shared attention-backend conformance kit ---------------------------------------------------


class TestSdpaConformance(AttentionBackendConformance):
    backend_name = BACKEND_NAME


class TestReferenceConformance(AttentionBackendConformance):
    """Core's reference backend passes the same kit (its float64 path is the yardstick itself)."""

    backend_name = "reference"
    dtypes = (torch.float32, torch.bfloat16)
