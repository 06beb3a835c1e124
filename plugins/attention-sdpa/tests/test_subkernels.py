"""SDPA's pinned sub-kernels and flex_attention, against core's reference backend.

On the CPU: ``sdpa-flash`` (torch's CPU flash kernel), ``sdpa-math`` and ``flex`` run the shared
conformance kit (reference parity over masks, causal, dtypes, head dims, scales); ``sdpa-efficient``
/ ``sdpa-cudnn`` are unavailable with the reason. On a GPU
(``gpu`` mark) every one runs the kit on CUDA inputs.
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


class _MatchesOrRefuses(AttentionBackendConformance):
    """For torch's fused CUDA kernels, whose limits on unequal causal lengths and on v's head dim
    vary by version and GPU and cannot be declared up front: each such case must either match
    the reference or raise ``AttentionBackendError`` naming the backend; never a wrong answer."""

    def _match_or_refuse(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool) -> None:
        try:
            attention(q, k, v, None, None, causal, backend=self.backend_name)
        except AttentionBackendError as exc:
            assert self.backend_name in str(exc)
            return
        self.assert_matches_reference(q, k, v, causal=causal)

    @pytest.mark.parametrize(("n_q", "n_k"), [(3, 8), (8, 3), (1, 1)])
    def test_causal_is_top_left_aligned_for_unequal_lengths(self, n_q: int, n_k: int) -> None:
        q, k, v = self.inputs(2, n_q, n_k, self.head_dims[-1], self.dtypes[0])
        self._match_or_refuse(q, k, v, True)

    def test_value_head_dim_may_differ(self) -> None:
        q, k, v = self.inputs(4, 5, 6, self.head_dims[-1], self.dtypes[0], v_dim=self.head_dims[-1] // 2)
        self._match_or_refuse(q, k, v, False)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
class TestSdpaFlashCudaConformance(_MatchesOrRefuses):
    backend_name = "sdpa-flash"
    device = "cuda"
    dtypes = (torch.float16, torch.bfloat16)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
class TestSdpaEfficientCudaConformance(_MatchesOrRefuses):
    backend_name = "sdpa-efficient"
    device = "cuda"
    head_dims = (8, 40, 64)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
class TestSdpaCudnnCudaConformance(_MatchesOrRefuses):
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
class TestFlexCudaConformance(_MatchesOrRefuses):
    """Compiled flex: one dtype and head dim keep the number of compilations small."""

    backend_name = "flex"
    device = "cuda"
    dtypes = (torch.float16,)
    head_dims = (64,)
