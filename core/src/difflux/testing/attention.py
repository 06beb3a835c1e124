"""Conformance kit for attention backends: subclass :class:`AttentionBackendConformance`.

::

    from difflux.testing import AttentionBackendConformance

    class TestMyFlash(AttentionBackendConformance):
        backend_name = "my-flash"   # the name the plugin registers
        device = "cuda"
        dtypes = (torch.float16, torch.bfloat16)

The kit checks the contract of :func:`difflux.attention.attention` that every backend shares:
``fn(q, k, v, attn_mask, scale, is_causal)`` with ``q``/``k``/``v`` shaped
``(batch, heads, seq, head_dim)`` returns ``(batch, heads, seq_q, head_dim_v)`` in the dtype of
``q``, equal (within a per-dtype tolerance) to :func:`difflux.attention.reference_attention`
computed in float64 on the same rounded inputs: boolean masks keep ``True`` positions, float masks
are added to the scores, masks broadcast, ``is_causal`` keeps key ``j`` for query ``i`` when
``j <= i`` (top-left aligned, also for unequal lengths), query rows that see no key give zeros,
``scale=None`` means ``1/sqrt(head_dim)``; inputs are left unmodified; dispatch by name runs the
registered function. Cases the backend's declared constraints reject (devices, dtypes, mask,
causal, head dim, ``accepts``) are not run, and the constraints themselves must hold: a backend
that runs on the case it declares it takes passes, one that declares nothing and fails does not.

A backend that is unavailable in this process (``requires`` / ``probe``) is skipped with the reason.
The backend comes from the installed plugins, or from ``plugin`` (registered for the test only).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any, ClassVar

import pytest
import torch

from ..attention import attention, attention_backend, reference_attention
from ..registry import AttentionBackendSpec, get_registry
from .fixtures import IsolatedRegistry

__all__ = ["DEFAULT_TOLERANCE", "AttentionBackendConformance"]

#: Largest absolute difference from the float64 reference, per input dtype.
DEFAULT_TOLERANCE: dict[torch.dtype, float] = {
    torch.float64: 1e-10,
    torch.float32: 2e-5,
    torch.float16: 4e-3,
    torch.bfloat16: 3e-2,
}

MASK_KINDS = ("none", "bool", "float")


class AttentionBackendConformance:
    """Base test class (no ``Test`` prefix, so pytest collects only subclasses)."""

    #: the registered name of the backend under test
    backend_name: ClassVar[str]
    #: a plugin (module or object) that registers it, for a backend not installed; ``None``: installed
    plugin: ClassVar[Any] = None
    #: where the inputs live
    device: ClassVar[str] = "cpu"
    #: the input dtypes to check (those the backend's ``dtypes`` constraint rejects are left out)
    dtypes: ClassVar[tuple[torch.dtype, ...]] = (torch.float32, torch.float16, torch.bfloat16)
    #: head dims to check
    head_dims: ClassVar[tuple[int, ...]] = (8, 40, 64)
    #: tolerance per dtype against the float64 reference
    tolerance: ClassVar[dict[torch.dtype, float]] = DEFAULT_TOLERANCE

    # -- set-up ---------------------------------------------------------------------------------

    @pytest.fixture(autouse=True)
    def _backend_registry(self, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
        isolated = IsolatedRegistry(monkeypatch)
        try:
            if self.plugin is not None:
                isolated.use((f"{self.backend_name}-under-test", self.plugin))
            else:
                isolated.use(installed=True)
            spec = get_registry().attention_backends.get(self.backend_name)
            assert spec is not None, f"no plugin registers the attention backend {self.backend_name!r}"
            why = spec.available()
            if why is not None:
                pytest.skip(f"attention backend {self.backend_name!r} is unavailable here: {why}")
            yield
        finally:
            isolated.close()

    @property
    def spec(self) -> AttentionBackendSpec:
        return get_registry().attention_backends[self.backend_name]

    def kernel(self) -> Any:
        return self.spec.load()

    def inputs(
        self, seed: int, n_q: int, n_k: int, head_dim: int, dtype: torch.dtype, v_dim: int | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Seeded ``(2, 3, seq, dim)`` queries, keys and values on :attr:`device` in ``dtype``."""
        g = torch.Generator().manual_seed(seed)
        shapes = ((2, 3, n_q, head_dim), (2, 3, n_k, head_dim), (2, 3, n_k, v_dim or head_dim))
        q, k, v = (torch.randn(*shape, generator=g) for shape in shapes)
        return q.to(self.device, dtype), k.to(self.device, dtype), v.to(self.device, dtype)

    def mask(self, kind: str, shape: tuple[int, ...], dtype: torch.dtype, seed: int) -> torch.Tensor | None:
        """``None``, a boolean keep-mask, or an additive float mask with ``-inf`` where not kept."""
        if kind == "none":
            return None
        g = torch.Generator().manual_seed(seed + 1000)
        keep = torch.rand(shape, generator=g) > 0.4
        keep[..., 0] = True  # every query row sees at least one key
        if kind == "bool":
            return keep.to(self.device)
        bias = torch.randn(shape, generator=g).masked_fill(~keep, float("-inf"))
        return bias.to(self.device, dtype)

    def runs(self, q: torch.Tensor, mask: torch.Tensor | None = None, causal: bool = False) -> bool:
        """Whether the backend's declared constraints accept these inputs (else the case is not run)."""
        return self.spec.check(q, mask, causal) is None

    def assert_matches_reference(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        mask: torch.Tensor | None = None,
        scale: float | None = None,
        causal: bool = False,
    ) -> torch.Tensor:
        got = self.kernel()(q, k, v, mask, scale, causal)
        assert isinstance(got, torch.Tensor), f"{self.backend_name} returned {type(got).__name__}, not a tensor"
        assert got.shape == (*q.shape[:-1], v.shape[-1]), f"shape {tuple(got.shape)}"
        assert got.dtype == q.dtype, f"dtype {got.dtype} for {q.dtype} inputs"
        assert got.device == q.device
        wide = mask.double() if mask is not None and mask.dtype != torch.bool else mask
        exact = reference_attention(q.double(), k.double(), v.double(), wide, scale, causal)
        err = (got.double() - exact).abs().max().item() if got.numel() else 0.0
        allowed = self.tolerance[q.dtype]
        assert err <= allowed, f"{self.backend_name}: max abs error {err:.3g} over {allowed:.3g} ({q.dtype})"
        return got

    def _cases(self) -> list[torch.dtype]:
        probe = (1, 1, 1, self.head_dims[0])
        kept = [d for d in self.dtypes if self.runs(torch.empty(*probe, device=self.device, dtype=d))]
        if not kept:
            pytest.skip(f"{self.backend_name} takes none of the dtypes {self.dtypes} on {self.device}")
        return kept

    # -- the checks -----------------------------------------------------------------------------

    @pytest.mark.parametrize("mask_kind", MASK_KINDS)
    @pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
    def test_matches_the_reference(self, mask_kind: str, causal: bool) -> None:
        ran = 0
        for dtype in self._cases():
            for head_dim in self.head_dims:
                q, k, v = self.inputs(head_dim, 5, 7, head_dim, dtype)
                mask = self.mask(mask_kind, (2, 1, 5, 7), dtype, head_dim)
                if self.runs(q, mask, causal):
                    self.assert_matches_reference(q, k, v, mask, causal=causal)
                    ran += 1
        if not ran:
            pytest.skip(f"{self.backend_name} declares it takes no {mask_kind} mask / causal={causal} inputs")

    @pytest.mark.parametrize("shape", [(5, 7), (2, 1, 5, 7), (2, 3, 5, 7), (1, 3, 1, 7)])
    def test_masks_broadcast(self, shape: tuple[int, ...]) -> None:
        dtype = self._cases()[0]
        q, k, v = self.inputs(1, 5, 7, self.head_dims[0], dtype)
        for kind in ("bool", "float"):
            mask = self.mask(kind, shape, dtype, 1)
            if self.runs(q, mask):
                self.assert_matches_reference(q, k, v, mask)

    @pytest.mark.parametrize(("n_q", "n_k"), [(3, 8), (8, 3), (1, 1)])
    def test_causal_is_top_left_aligned_for_unequal_lengths(self, n_q: int, n_k: int) -> None:
        dtype = self._cases()[0]
        q, k, v = self.inputs(2, n_q, n_k, self.head_dims[0], dtype)
        if not self.runs(q, None, True):
            pytest.skip(f"{self.backend_name} has no causal mode")
        self.assert_matches_reference(q, k, v, causal=True)

    @pytest.mark.parametrize("scale", [None, 0.05, 1.0, 3.0])
    def test_scale(self, scale: float | None) -> None:
        dtype = self._cases()[0]
        q, k, v = self.inputs(3, 4, 6, self.head_dims[0], dtype)
        self.assert_matches_reference(q, k, v, scale=scale)
        if scale is None:  # the default is 1/sqrt(head_dim)
            explicit = self.kernel()(q, k, v, None, 1.0 / math.sqrt(q.shape[-1]), False)
            torch.testing.assert_close(self.kernel()(q, k, v, None, None, False), explicit)

    def test_value_head_dim_may_differ(self) -> None:
        dtype = self._cases()[0]
        q, k, v = self.inputs(4, 5, 6, self.head_dims[0], dtype, v_dim=self.head_dims[0] * 2)
        if self.runs(q):
            self.assert_matches_reference(q, k, v)

    def test_query_rows_that_see_no_key_are_zero(self) -> None:
        dtype = self._cases()[0]
        q, k, v = self.inputs(5, 4, 4, self.head_dims[0], dtype)
        keep = torch.ones(4, 4, dtype=torch.bool, device=self.device)
        keep[2] = False
        for mask in (keep, torch.zeros(4, 4, device=self.device, dtype=dtype).masked_fill(~keep, float("-inf"))):
            if not self.runs(q, mask):
                pytest.skip(f"{self.backend_name} takes no attention mask")
            got = self.kernel()(q, k, v, mask, None, False)
            assert torch.count_nonzero(got[..., 2, :]) == 0, "a row with no visible key must be zeros"
            assert torch.isfinite(got).all()

    def test_leaves_its_inputs_unchanged(self) -> None:
        dtype = self._cases()[0]
        q, k, v = self.inputs(6, 5, 7, self.head_dims[0], dtype)
        mask = self.mask("float", (5, 7), dtype, 6)
        if not self.runs(q, mask, True):
            mask = None
        before = [t.clone() for t in (q, k, v)] + ([mask.clone()] if mask is not None else [])
        self.kernel()(q, k, v, mask, None, mask is not None)
        after = [q, k, v] + ([mask] if mask is not None else [])
        for old, new in zip(before, after):
            assert torch.equal(old, new), "the backend modified its inputs in place"

    def test_dispatch_by_name_runs_the_registered_function(self) -> None:
        dtype = self._cases()[0]
        q, k, v = self.inputs(7, 3, 3, self.head_dims[0], dtype)
        direct = self.kernel()(q, k, v, None, None, False)
        torch.testing.assert_close(attention(q, k, v, backend=self.backend_name), direct, atol=0, rtol=0)
        with attention_backend(self.backend_name):
            torch.testing.assert_close(attention(q, k, v), direct, atol=0, rtol=0)

    def test_runs_at_its_declared_head_dim_limit(self) -> None:
        """A backend that declares ``max_head_dim`` must work at that head dim (the constraint is honest)."""
        limit = self.spec.max_head_dim
        if limit is None:
            limit = max(self.head_dims)
        dtype = self._cases()[0]
        q, k, v = self.inputs(8, 4, 5, limit, dtype)
        assert self.runs(q), f"{self.backend_name} declares max_head_dim={limit} but rejects head dim {limit}"
        self.assert_matches_reference(q, k, v)
