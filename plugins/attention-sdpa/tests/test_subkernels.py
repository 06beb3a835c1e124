"""SDPA's pinned sub-kernels and flex_attention, against core's reference backend.

On the CPU: ``sdpa-flash`` (torch's CPU flash kernel), ``sdpa-math`` and ``flex`` run the shared
conformance kit (reference parity over masks, causal, dtypes, head dims, scales); ``sdpa-efficient``
/ ``sdpa-cudnn`` are unavailable with the reason. On a GPU
(``gpu`` mark) every one runs against the reference computed in float64.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import torch
from difflux.attention import ENV_VAR, AttentionBackendError, attention, reference_attention, set_attention_backend
from difflux.attention_plugins import cuda_reason
from difflux.cli import plugins_report
from difflux.errors import ConfigError
from difflux.modeling import ModelMixin
from difflux.registry import get_registry, reset_registry
from difflux.testing import AttentionBackendConformance
from difflux_attention_sdpa.kernels import flash_accepts, flex_accepts

SUBKERNELS = ("sdpa-flash", "sdpa-efficient", "sdpa-cudnn", "sdpa-math", "flex")


@pytest.fixture
def registry(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for var in ("DIFFLUX_LOAD_PLUGINS", "DIFFLUX_DISABLE_PLUGIN_AUTOLOAD", ENV_VAR):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("DIFFLUX_LOAD_PLUGINS", "attention-sdpa")
    reset_registry()
    try:
        yield
    finally:
        set_attention_backend(None)
        reset_registry()


def _inputs(seed: int, n_q: int, n_k: int, dim: int, dtype: torch.dtype, device: str = "cpu") -> Any:
    g = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(2, 3, n, dim, generator=g).to(device, dtype) for n in (n_q, n_k, n_k))


def _mask(kind: str, shape: tuple[int, ...], dtype: torch.dtype, device: str = "cpu") -> torch.Tensor | None:
    g = torch.Generator().manual_seed(11)
    if kind == "none":
        return None
    keep = torch.rand(shape, generator=g) > 0.4
    keep[..., 0] = True
    if kind == "bool":
        return keep.to(device)
    return torch.randn(shape, generator=g).masked_fill(~keep, float("-inf")).to(device, dtype)


def _against_reference(name: str, q: Any, k: Any, v: Any, mask: Any, scale: Any, causal: bool) -> float:
    got = attention(q, k, v, mask, scale, causal, backend=name)
    assert got.dtype == q.dtype and got.shape == (*q.shape[:-1], v.shape[-1]) and got.device == q.device
    wide = mask.double() if mask is not None and mask.dtype != torch.bool else mask
    exact = reference_attention(q.double(), k.double(), v.double(), wide, scale, causal)
    return float((got.double() - exact).abs().max())


def test_pinned_kernel_is_really_pinned(registry: None, monkeypatch: pytest.MonkeyPatch) -> None:
    import difflux_attention_sdpa.kernels as kernels
    from torch.nn.attention import SDPBackend

    seen: list[Any] = []
    real = kernels.sdpa_kernel

    def spy(backend: Any) -> Any:
        seen.append(backend)
        return real(backend)

    monkeypatch.setattr(kernels, "sdpa_kernel", spy)
    q, k, v = _inputs(1, 4, 4, 8, torch.float32)
    attention(q, k, v, backend="sdpa-math")
    attention(q, k, v, backend="sdpa-flash")
    assert seen == [SDPBackend.MATH, SDPBackend.FLASH_ATTENTION]


def test_no_kernel_becomes_a_clear_error(registry: None) -> None:
    q, k, _ = _inputs(2, 5, 6, 16, torch.float32)
    v = torch.randn(2, 3, 6, 12)  # the flash kernel needs v's head dim equal to q's
    with pytest.raises(AttentionBackendError, match=r"'sdpa-flash' \(torch FLASH_ATTENTION\) cannot.*same last dim"):
        attention(q, k, v, backend="sdpa-flash")


def test_registered_with_honest_constraints(registry: None) -> None:
    specs = get_registry().attention_backends
    assert set(SUBKERNELS) <= set(specs)
    assert all(specs[n].plugin == "attention-sdpa" and specs[n].priority < specs["sdpa"].priority for n in SUBKERNELS)
    assert specs["sdpa-cudnn"].dtypes == frozenset({"float16", "bfloat16"}) and specs["sdpa-cudnn"].max_head_dim == 128
    assert specs["sdpa-efficient"].devices == frozenset({"cuda"})
    assert specs["sdpa-efficient"].check(torch.empty(1, 1, 1, 8, device="meta")) == "runs on ['cuda'], not meta"
    fake_cuda = torch.empty(1, 1, 1, 40, dtype=torch.float32, device="meta")
    assert flex_accepts(fake_cuda, None, False) is None  # cpu / meta: eager, any head dim
    assert "float16" in (flash_accepts(_Cuda(torch.float32, 64), None, False) or "")
    assert "no attention mask" in (flash_accepts(_Cuda(torch.float16, 64), torch.ones(1), False) or "")
    assert "up to 256" in (flash_accepts(_Cuda(torch.float16, 512), None, False) or "")
    assert flash_accepts(_Cuda(torch.bfloat16, 128), None, True) is None
    assert "power-of-two" in (flex_accepts(_Cuda(torch.float16, 40), None, False) or "")


class _Cuda:
    """What the checks read of a CUDA tensor (device, dtype, shape), without a GPU."""

    def __init__(self, dtype: torch.dtype, dim: int) -> None:
        self.device = torch.device("cuda")
        self.dtype = dtype
        self.shape = (1, 1, 4, dim)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only machine")
def test_cuda_only_kernels_are_unavailable_with_the_reason(registry: None) -> None:
    report = plugins_report()
    entries = {b["name"]: b for p in report["plugins"] for b in p["attention_backends"]}
    for name in ("sdpa-efficient", "sdpa-cudnn"):
        assert entries[name]["available"] is False
        assert "needs a CUDA device" in entries[name]["unavailable"]
    assert cuda_reason() is not None
    q, k, v = _inputs(3, 4, 4, 8, torch.float32)
    with pytest.raises(AttentionBackendError, match=r"'sdpa-efficient'.*not usable here: needs a CUDA device"):
        attention(q, k, v, backend="sdpa-efficient")
    with pytest.raises(ConfigError, match=r"'sdpa-cudnn'.*not usable here"):
        _Tiny().set_attention_backend("sdpa-cudnn")
    torch.testing.assert_close(attention(q, k, v), reference_attention(q, k, v))  # the others still work


class _Tiny(ModelMixin):
    def __init__(self) -> None:
        super().__init__()
        self.lin = torch.nn.Linear(2, 2)


# -- on a GPU --------------------------------------------------------------------------------

GPU_TOLERANCE = {torch.float32: 2e-3, torch.float16: 3e-3, torch.bfloat16: 2e-2}


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("name", SUBKERNELS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
@pytest.mark.parametrize("mask_kind", ["none", "float"])
@pytest.mark.parametrize("causal", [False, True])
def test_subkernels_match_reference_on_cuda(
    registry: None, name: str, dtype: torch.dtype, mask_kind: str, causal: bool
) -> None:
    q, k, v = _inputs(5, 64, 77, 64, dtype, "cuda")
    mask = _mask(mask_kind, (2, 1, 64, 77), dtype, "cuda")
    spec = get_registry().attention_backends[name]
    why = spec.available() or spec.check(q, mask, causal)
    if why is not None:  # the constraint is stated: the call must refuse, naming it
        with pytest.raises(AttentionBackendError, match=name):
            attention(q, k, v, mask, None, causal, backend=name)
        return
    err = _against_reference(name, q, k, v, mask, None, causal)
    assert err <= GPU_TOLERANCE[dtype], f"{name}: max abs error {err:.3g}"


# -- the shared attention-backend conformance kit ---------------------------------------------------


class TestSdpaFlashConformance(AttentionBackendConformance):
    backend_name = "sdpa-flash"

    def test_value_head_dim_may_differ(self) -> None:
        """torch's flash kernel needs equal q and v head dims: a clear error, not a wrong answer."""
        q, k, v = self.inputs(4, 5, 6, self.head_dims[0], torch.float32, v_dim=self.head_dims[0] * 2)
        with pytest.raises(AttentionBackendError, match=r"sdpa-flash.*same last dim"):
            attention(q, k, v, backend=self.backend_name)


class TestSdpaMathConformance(AttentionBackendConformance):
    backend_name = "sdpa-math"


class TestFlexConformance(AttentionBackendConformance):
    backend_name = "flex"
    dtypes = (torch.float32, torch.bfloat16)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
class TestSdpaFlashCudaConformance(TestSdpaFlashConformance):
    device = "cuda"
    dtypes = (torch.float16, torch.bfloat16)

    def test_value_head_dim_may_differ(self) -> None:  # no mask on CUDA; same check on CUDA inputs
        q, k, v = self.inputs(4, 5, 6, 64, torch.float16, v_dim=128)
        with pytest.raises(AttentionBackendError, match="sdpa-flash"):
            attention(q, k, v, backend=self.backend_name)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
class TestSdpaEfficientCudaConformance(AttentionBackendConformance):
    backend_name = "sdpa-efficient"
    device = "cuda"
    head_dims = (8, 40, 64)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
class TestSdpaCudnnCudaConformance(AttentionBackendConformance):
    backend_name = "sdpa-cudnn"
    device = "cuda"
    dtypes = (torch.float16, torch.bfloat16)
    head_dims = (64, 128)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
class TestSdpaMathCudaConformance(AttentionBackendConformance):
    backend_name = "sdpa-math"
    device = "cuda"


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
class TestFlexCudaConformance(AttentionBackendConformance):
    backend_name = "flex"
    device = "cuda"
    head_dims = (16, 64, 128)
