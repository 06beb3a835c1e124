"""The Flax attention registry: the default kernel's maths, choosing kernels, third-party kernels."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from difflux_flax import attention as fa


def _qkv(seed: int = 0) -> tuple[jax.Array, jax.Array, jax.Array]:
    rng = np.random.default_rng(seed)
    q = rng.standard_normal((2, 5, 3, 4)).astype(np.float32)
    k = rng.standard_normal((2, 7, 3, 4)).astype(np.float32)
    v = rng.standard_normal((2, 7, 3, 4)).astype(np.float32)
    return jnp.asarray(q), jnp.asarray(k), jnp.asarray(v)


def test_dot_kernel_matches_torch_sdpa() -> None:
    q, k, v = _qkv()
    ref = torch.nn.functional.scaled_dot_product_attention(
        *(torch.from_numpy(np.array(a)).transpose(1, 2) for a in (q, k, v))
    ).transpose(1, 2)
    np.testing.assert_allclose(np.asarray(fa.attention(q, k, v)), ref.numpy(), atol=1e-5, rtol=0)
    np.testing.assert_allclose(np.asarray(fa.attention(q, k, v, kernel="xla")), ref.numpy(), atol=1e-5, rtol=0)


def test_choice_by_context_and_process_and_errors() -> None:
    calls: list[str] = []

    def spy(q: Any, k: Any, v: Any, scale: float) -> Any:
        calls.append("spy")
        return fa.dot_product(q, k, v, scale)

    fa.register_attention_kernel("test-spy", spy, priority=-5)
    try:
        q, k, v = _qkv(1)
        with fa.attention_kernel("test-spy"):
            fa.attention(q, k, v)
        assert calls == ["spy"]
        fa.attention(q, k, v)
        assert calls == ["spy"]  # back to the default outside the block
        fa.set_attention_kernel("test-spy")
        fa.attention(q, k, v)
        assert calls == ["spy", "spy"]
        with pytest.raises(ValueError, match="already registered"):
            fa.register_attention_kernel("test-spy", spy)
    finally:
        fa.set_attention_kernel("dot")
        fa._KERNELS.pop("test-spy")
    with pytest.raises(KeyError, match="no Flax attention kernel named 'nope'"):
        fa.set_attention_kernel("nope")
    why = fa.available_kernels()
    assert why["dot"] is None and "TPU" in (why["splash"] or "")
    with pytest.raises(RuntimeError, match="cannot run here"):
        fa.attention(*_qkv(), kernel="splash")
    with pytest.raises(ValueError, match="do not fit together"):
        fa.attention(jnp.zeros((1, 2, 3, 4)), jnp.zeros((1, 2, 3, 5)), jnp.zeros((1, 2, 3, 5)))


def test_a_third_party_kernel_from_an_entry_point(monkeypatch: pytest.MonkeyPatch) -> None:
    """An installed distribution's entry point in the group difflux_flax.attention registers a kernel."""

    class EntryPoint:
        name = "thirdparty"

        def load(self) -> Any:
            def register(reg: Any) -> None:
                reg("thirdparty-dot", "difflux_flax.attention:dot_product", priority=-1)

            return register

    monkeypatch.setattr(fa, "_entry_points_loaded", False)
    monkeypatch.setattr(fa, "entry_points", lambda group: [EntryPoint()] if group == fa.ENTRY_POINT_GROUP else [])
    try:
        assert "thirdparty-dot" in fa.available_kernels()
        q, k, v = _qkv(2)
        np.testing.assert_array_equal(np.asarray(fa.attention(q, k, v, kernel="thirdparty-dot")),
                                      np.asarray(fa.attention(q, k, v)))  # fmt: skip
    finally:
        fa._KERNELS.pop("thirdparty-dot", None)


def test_a_model_uses_its_own_kernel(sd_folder: Path) -> None:
    from difflux_flax.vae import FlaxAutoencoderKL

    seen: list[tuple[int, ...]] = []

    def record(q: Any, k: Any, v: Any, scale: float) -> Any:
        seen.append(tuple(q.shape))
        return fa.dot_product(q, k, v, scale)

    fa.register_attention_kernel("test-record", record)
    try:
        vae, params = FlaxAutoencoderKL.from_pretrained(sd_folder, "vae", attention_kernel="test-record")
        seen.clear()  # loading traced the module once (the params' shapes)
        jax.eval_shape(lambda p: vae.apply({"params": p}, jnp.zeros((1, 4, 4, 4)), method=vae.decode), params)
        assert seen == [(1, 16, 1, 16)]  # the decoder's mid-block attention over 4x4 latents, one head
    finally:
        fa._KERNELS.pop("test-record")


def test_registry_lists_flax_classes_without_importing_jax() -> None:
    import subprocess
    import sys

    code = (
        "import sys, difflux\n"
        "r = difflux.get_registry()\n"
        "names = [*r.pipelines, *r.schedulers, *(c for _, c in r.components)]\n"
        "names = sorted(n for n in names if n.startswith('Flax'))\n"
        "print(names, sorted(m for m in ('jax', 'flax', 'jaxlib', 'torch') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "'FlaxStableDiffusionPipeline'" in out and "'FlaxUNet2DConditionModel'" in out
    assert "'FlaxCLIPTextModel'" in out and "'FlaxDPMSolverMultistepScheduler'" in out
    assert out.strip().endswith("[]"), out


@pytest.mark.slow  # the Pallas interpreter is slow on CPU (~3 s of CPU); --run-slow runs it
@pytest.mark.parametrize(("kernel", "seq"), [("flash_gpu", 64), ("splash", 128)])
def test_pallas_kernels_in_the_interpreter_match_dot(kernel: str, seq: int) -> None:
    """The Pallas kernels' wiring (layout, scale, head-dim padding, fallback) checked on CPU in interpret mode."""
    rng = np.random.default_rng(3)
    q, k, v = (jnp.asarray(rng.standard_normal((1, seq, 2, 40)).astype(np.float32)) for _ in range(3))
    fn = getattr(fa, kernel)
    ref = fa.dot_product(q, k, v, 0.2)
    np.testing.assert_allclose(np.asarray(fn(q, k, v, 0.2, interpret=True)), np.asarray(ref), atol=1e-5, rtol=0)
    # 77 text tokens: no block divides them, the dot kernel runs
    k77, v77 = (jnp.asarray(rng.standard_normal((1, 77, 2, 40)).astype(np.float32)) for _ in range(2))
    ref77 = fa.dot_product(q, k77, v77, 0.2)
    np.testing.assert_array_equal(np.asarray(fn(q, k77, v77, 0.2, interpret=True)), np.asarray(ref77))
