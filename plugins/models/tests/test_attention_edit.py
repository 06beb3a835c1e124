"""Reading and editing attention through processors (docs/attention.md, "Reading and editing attention").

A third-party processor written for the documented protocol (subclassing
``AttentionEditProcessor``) is installed on chosen modules and changes the output the way a
hand computation says; Diffusers' own processor written for the same edit gives the same UNet
output; modules not chosen keep the fused kernel.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from difflux_models import UNet2DConditionModel
from difflux_models.layers.attention import (
    Attention,
    AttentionEditProcessor,
    AttentionStoreProcessor,
    AttnProcessor,
    edit_attention,
)

CONFIG: dict[str, Any] = {
    "sample_size": 8,
    "in_channels": 4,
    "out_channels": 4,
    "block_out_channels": (16, 32),
    "layers_per_block": 1,
    "norm_num_groups": 4,
    "down_block_types": ("CrossAttnDownBlock2D", "DownBlock2D"),
    "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D"),
    "cross_attention_dim": 12,
    "attention_head_dim": 2,
}


# -- a "third-party" processor: only the documented protocol, nothing from difflux's internals --------


class UniformCrossAttention(AttentionEditProcessor):
    """Replaces cross-attention weights by uniform ones (every token counts the same)."""

    def edit_probs(self, attn: Any, probs: torch.Tensor, cross: bool) -> torch.Tensor:
        return torch.full_like(probs, 1.0 / probs.shape[-1]) if cross else probs


class ZeroQuery(AttentionEditProcessor):
    """Adds ``-q`` to the queries: all scores 0, so softmax is uniform, on the fused path."""

    def edit_qkv(self, attn: Any, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cross: bool) -> Any:
        return q - q, k, v


def inputs(batch: int = 2) -> dict[str, Any]:
    g = torch.Generator().manual_seed(0)
    return {
        "sample": torch.randn(batch, 4, 8, 8, generator=g),
        "timestep": torch.tensor([10, 500][:batch]),
        "encoder_hidden_states": torch.randn(batch, 5, 12, generator=g),
    }


@pytest.fixture(scope="module")
def unets(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Any]:
    """A seeded Diffusers UNet with perturbed weights, and difflux's loaded from its folder."""
    import diffusers

    torch.manual_seed(0)
    ref = diffusers.UNet2DConditionModel(**CONFIG).eval()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in ref.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.05)
    folder = tmp_path_factory.mktemp("unet-edit")
    ref.save_pretrained(folder)
    return ref, UNet2DConditionModel.from_pretrained(folder).eval()


def _module(cross: bool = True) -> Attention:
    torch.manual_seed(3)
    return Attention(query_dim=8, cross_attention_dim=6 if cross else None, heads=2, dim_head=4).eval()


def test_stored_probs_and_replaced_probs_match_a_hand_computation() -> None:
    attn = _module()
    x = torch.randn(1, 3, 8, generator=torch.Generator().manual_seed(0))
    ctx = torch.randn(1, 4, 6, generator=torch.Generator().manual_seed(1))
    store = AttentionStoreProcessor()
    attn.set_processor(store)
    with torch.no_grad():
        out = attn(x, ctx)
        q = attn.to_q(x).view(1, 3, 2, 4).transpose(1, 2)
        k = attn.to_k(ctx).view(1, 4, 2, 4).transpose(1, 2)
        v = attn.to_v(ctx).view(1, 4, 2, 4).transpose(1, 2)
        probs = torch.softmax(q @ k.transpose(-1, -2) / 2.0, dim=-1)  # scale 4 ** -0.5
        expected = attn.to_out[0]((probs @ v).transpose(1, 2).reshape(1, 3, 8))
        assert store.probs is not None and store.probs.shape == (1, 2, 3, 4)
        torch.testing.assert_close(store.probs, probs, atol=1e-6, rtol=0)
        torch.testing.assert_close(out, expected, atol=1e-6, rtol=0)
        # uniform weights: every query gets the mean of the values
        attn.set_processor(UniformCrossAttention())
        uniform = attn(x, ctx)
        mean_v = v.mean(dim=2, keepdim=True).expand(1, 2, 3, 4)
        torch.testing.assert_close(uniform, attn.to_out[0](mean_v.transpose(1, 2).reshape(1, 3, 8)), atol=1e-6, rtol=0)


def test_an_edit_processor_that_edits_nothing_gives_the_default_output_on_the_fused_path() -> None:
    attn = _module(cross=False)
    x = torch.randn(2, 3, 8, generator=torch.Generator().manual_seed(0))
    called: list[str] = []

    class Spy(AttentionEditProcessor):
        def edit_qkv(self, attn: Any, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cross: bool) -> Any:
            called.append("qkv")
            return q, k, v

    with torch.no_grad():
        plain = attn(x)
        attn.set_processor(Spy())
        assert not attn.processor.wants_probs(attn, False)  # no edit_probs override: fused kernel
        assert torch.equal(attn(x), plain) and called == ["qkv"]


def test_unet_edit_matches_diffusers_processor_and_other_modules_stay_fused(unets: tuple[Any, Any]) -> None:
    ref, ours = unets
    from diffusers.models.attention_processor import AttnProcessor as DAttnProcessor

    class DiffusersUniform(DAttnProcessor):  # the same edit, written the Diffusers way
        def __call__(self, attn: Any, hidden_states: Any, encoder_hidden_states: Any = None, *a: Any, **k: Any) -> Any:
            if encoder_hidden_states is None:
                return super().__call__(attn, hidden_states, encoder_hidden_states, *a, **k)
            v = attn.head_to_batch_dim(attn.to_v(encoder_hidden_states))
            probs = torch.full((v.shape[0], hidden_states.shape[1], v.shape[1]), 1.0 / v.shape[1])
            return attn.to_out[0](attn.batch_to_head_dim(torch.bmm(probs, v)))

    with torch.no_grad():
        plain = ours(**inputs()).sample
        names = [n for n in ref.attn_processors]
        ref.set_attn_processor({n: DiffusersUniform() if ".attn2." in n else DAttnProcessor() for n in names})
        expected = ref(**inputs()).sample
        before = dict(ours.attn_processors)
        with edit_attention(ours, lambda name, m: UniformCrossAttention() if name.endswith("attn2") else None) as done:
            assert done and all(n.endswith("attn2") for n in done)
            assert all(p.name == n for n, p in done.items())
            untouched = [m for n, m in ours.named_modules() if n.endswith("attn1")]
            assert all(type(m.processor) is AttnProcessor for m in untouched)
            edited = ours(**inputs()).sample
        assert ours.attn_processors == before  # restored
        with edit_attention(ours, lambda name, m: ZeroQuery() if name.endswith("attn2") else None):
            fused = ours(**inputs()).sample
    assert (edited - expected).abs().max() <= 1e-4
    assert (fused - edited).abs().max() <= 1e-5  # q = 0 on the fused kernel: uniform weights too
    assert (edited - plain).abs().max() > 1e-3  # the edit changed the output


def test_set_attn_processor_mapping_and_edit_errors(unets: tuple[Any, Any]) -> None:
    _, ours = unets
    stores = {name: AttentionStoreProcessor(only_cross=True) for name in ours.attn_processors}
    ours.set_attn_processor(stores)
    try:
        with torch.no_grad():
            ours(**inputs(1))
        self_attn = [p for n, p in stores.items() if ".attn1." in n]
        cross = [p for n, p in stores.items() if ".attn2." in n]
        assert all(p.probs is None for p in self_attn)  # only_cross: self-attention kept the fused kernel
        assert all(p.probs is not None and torch.allclose(p.probs.sum(-1), torch.ones(())) for p in cross)
        assert {p.probs.shape[-1] for p in cross if p.probs is not None} == {5}
    finally:
        ours.set_default_attn_processor()
    with (
        pytest.raises(TypeError, match="return an attention processor"),
        edit_attention(ours, lambda name, m: 3),  # type: ignore[arg-type, return-value]
    ):
        pass
    assert all(type(p) is AttnProcessor for p in ours.attn_processors.values())


def test_diffusers_layout_helpers_round_trip() -> None:
    attn = _module(cross=False)
    x = torch.randn(2, 3, 8, generator=torch.Generator().manual_seed(0))
    split = attn.head_to_batch_dim(x)
    assert split.shape == (4, 3, 4)
    assert torch.equal(attn.batch_to_head_dim(split), x)
    probs = attn.get_attention_scores(split, split)
    torch.testing.assert_close(probs, torch.softmax(split @ split.transpose(1, 2) * 0.5, -1), atol=1e-6, rtol=0)


def test_a_processor_keeps_the_name_its_author_gave() -> None:
    """A processor installed by edit_attention keeps a name it was given by its author."""
    attn = _module()
    holder = torch.nn.Sequential(attn)
    named = UniformCrossAttention()
    named.name = "mine"
    with edit_attention(holder, lambda n, m: named):
        assert attn.processor is named and named.name == "mine"
    assert type(attn.processor) is AttnProcessor
