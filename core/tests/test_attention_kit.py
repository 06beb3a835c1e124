"""The attention-backend conformance kit catches backends that break the contract, and passes a correct one."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from difflux import hookimpl
from difflux.attention import reference_attention
from difflux.testing import AttentionBackendConformance, IsolatedRegistry


def _ignores_scale(q: Any, k: Any, v: Any, mask: Any, scale: Any, causal: bool) -> Any:
    return reference_attention(q, k, v, mask, None, causal)


def _ignores_mask(q: Any, k: Any, v: Any, mask: Any, scale: Any, causal: bool) -> Any:
    return reference_attention(q, k, v, None, scale, causal)


def _bottom_right_causal(q: Any, k: Any, v: Any, mask: Any, scale: Any, causal: bool) -> Any:
    if not causal:
        return reference_attention(q, k, v, mask, scale, False)
    n_q, n_k = q.shape[-2], k.shape[-2]
    keep = torch.ones(n_q, n_k, dtype=torch.bool).tril(diagonal=n_k - n_q)
    return reference_attention(q, k, v, keep, scale, False)


def _upcasts(q: Any, k: Any, v: Any, mask: Any, scale: Any, causal: bool) -> Any:
    return reference_attention(q.float(), k.float(), v.float(), mask, scale, causal)


def _in_place(q: Any, k: Any, v: Any, mask: Any, scale: Any, causal: bool) -> Any:
    q.mul_(1.0 + 1e-3)
    return reference_attention(q, k, v, mask, scale, causal)


def _nan_rows(q: Any, k: Any, v: Any, mask: Any, scale: Any, causal: bool) -> Any:
    scores = (q.float() @ k.float().transpose(-2, -1)) * (scale or q.shape[-1] ** -0.5)
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else scores + mask
    return (scores.softmax(-1) @ v.float()).to(q.dtype)  # no zeros for blind rows: NaN


BROKEN: dict[str, tuple[Any, str, dict[str, Any]]] = {
    "ignores scale": (_ignores_scale, "test_scale", {"scale": 3.0}),
    "ignores mask": (_ignores_mask, "test_matches_the_reference", {"mask_kind": "bool", "causal": False}),
    "bottom-right causal": (
        _bottom_right_causal,
        "test_causal_is_top_left_aligned_for_unequal_lengths",
        {"n_q": 3, "n_k": 8},
    ),
    "returns float32 for half inputs": (_upcasts, "test_matches_the_reference", {"mask_kind": "none", "causal": False}),
    "modifies its inputs": (_in_place, "test_leaves_its_inputs_unchanged", {}),
    "NaN for blind rows": (_nan_rows, "test_query_rows_that_see_no_key_are_zero", {}),
}


class _Kit(AttentionBackendConformance):
    backend_name = "candidate"


def _plugin(fn: Any) -> object:
    class Plugin:
        @hookimpl
        def difflux_register_attention_backends(self, register: Any) -> None:
            register("candidate", fn, priority=1000)

    return Plugin()


@pytest.mark.parametrize("bug", sorted(BROKEN))
def test_the_kit_catches_a_broken_backend(difflux_registry: IsolatedRegistry, bug: str) -> None:
    fn, check, kwargs = BROKEN[bug]
    difflux_registry.use(("candidates", _plugin(fn)))
    with pytest.raises(AssertionError):
        getattr(_Kit(), check)(**kwargs)


@pytest.mark.parametrize("bug", sorted(BROKEN))
def test_the_same_checks_pass_a_correct_backend(difflux_registry: IsolatedRegistry, bug: str) -> None:
    _, check, kwargs = BROKEN[bug]
    difflux_registry.use(("candidates", _plugin(reference_attention)))
    getattr(_Kit(), check)(**kwargs)


def test_a_head_dim_limit_the_kernel_does_not_meet_fails(difflux_registry: IsolatedRegistry) -> None:
    def small_only(q: Any, k: Any, v: Any, mask: Any, scale: Any, causal: bool) -> Any:
        if q.shape[-1] > 64:
            raise RuntimeError("kernel built for head dims up to 64")
        return reference_attention(q, k, v, mask, scale, causal)

    class Claims:
        def __init__(self, limit: int) -> None:
            self.limit = limit

        @hookimpl
        def difflux_register_attention_backends(self, register: Any) -> None:
            register("candidate", small_only, max_head_dim=self.limit)

    difflux_registry.use(("candidates", Claims(128)))
    with pytest.raises(RuntimeError, match="up to 64"):
        _Kit().test_runs_at_its_declared_head_dim_limit()
    difflux_registry.use(("candidates", Claims(64)))
    _Kit().test_runs_at_its_declared_head_dim_limit()
