"""Shared parity helpers for the models plugin's tests (diffusers is the test-only oracle).

``check_parity`` is the contract of issue 4 in one call: diffusers builds a seeded random model
and saves it; difflux loads the folder; the same inputs give the same outputs; difflux saves the
model and diffusers loads that folder with no missing, unexpected or mis-shaped keys and again
gives the same output.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pytest
import torch

Forward = Callable[[torch.nn.Module, dict[str, Any]], torch.Tensor]

#: fp32 CPU tolerance of the parity contract.
ATOL = 1e-4

# The models here are tiny: one intra-op thread is as fast as several on an idle machine and keeps
# the suite fast on a loaded one (a busy thread pool made single forwards 100x slower).
torch.set_num_threads(1)


def sample_of(model: torch.nn.Module, inputs: dict[str, Any]) -> torch.Tensor:
    """``model(**inputs)``'s first output (``.sample`` or ``[0]``)."""
    out = model(**inputs)
    if isinstance(out, torch.Tensor):
        return out
    sample = getattr(out, "sample", None)
    if isinstance(sample, torch.Tensor):
        return sample
    first = out[0]
    assert isinstance(first, torch.Tensor)
    return first


@torch.no_grad()
def perturb_(model: torch.nn.Module, seed: int = 1, scale: float = 0.05) -> None:
    """Add seeded noise to every parameter, so norm weights (1) and biases (0) are not trivially
    equal and a swapped or ignored tensor shows up in the outputs."""
    g = torch.Generator().manual_seed(seed)
    for p in model.parameters():
        if p.is_floating_point():
            p.add_(torch.randn(p.shape, generator=g, dtype=p.dtype) * scale)


def assert_close(actual: torch.Tensor, expected: torch.Tensor, atol: float = ATOL, what: str = "output") -> None:
    assert actual.shape == expected.shape, f"{what}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    diff = (actual.float() - expected.float()).abs().max().item()
    assert diff <= atol, f"{what}: max abs difference {diff:.3g} > {atol}"


@dataclasses.dataclass
class Parity:
    """What :func:`check_parity` built: the diffusers model, the difflux model, their outputs."""

    reference: torch.nn.Module
    model: Any
    expected: torch.Tensor
    actual: torch.Tensor
    folder: Path


def check_parity(
    diffusers_cls: type[Any],
    difflux_cls: type[Any],
    config: Mapping[str, Any],
    inputs: Callable[[], dict[str, Any]],
    tmp_path: Path,
    *,
    forward: Forward = sample_of,
    atol: float = ATOL,
    seed: int = 0,
    perturb: bool = True,
    reverse: bool = True,
) -> Parity:
    """Run the two-way parity contract and return what it built.

    :param inputs: makes fresh forward kwargs (called once per model, so in-place edits cannot leak).
    :param forward: how to run a model on the inputs and get the tensor to compare.
    """
    torch.manual_seed(seed)
    reference = diffusers_cls(**config).eval()
    if perturb:
        perturb_(reference, seed + 1)
    src = tmp_path / "from_diffusers"
    reference.save_pretrained(src)
    model = difflux_cls.from_pretrained(src)
    assert isinstance(model, difflux_cls)
    assert set(model.state_dict()) == set(reference.state_dict()), "state-dict keys differ from diffusers'"
    with torch.no_grad():
        expected = forward(reference, inputs())
        actual = forward(model, inputs())
    assert_close(actual, expected, atol, "difflux output vs diffusers")
    if reverse:
        dst = tmp_path / "from_difflux"
        model.save_pretrained(dst)
        back, info = diffusers_cls.from_pretrained(dst, output_loading_info=True)
        assert not info["missing_keys"], info["missing_keys"]
        assert not info["unexpected_keys"], info["unexpected_keys"]
        assert not info["mismatched_keys"], info["mismatched_keys"]
        assert dict(back.config).keys() >= {k for k in model.config if not k.startswith("_")}
        with torch.no_grad():
            again = forward(back.eval(), inputs())
        assert_close(again, expected, atol, "diffusers output after loading the difflux-saved folder")
    return Parity(reference, model, expected, actual, src)


@pytest.fixture
def parity(tmp_path: Path) -> Callable[..., Parity]:
    """``parity(diffusers_cls, difflux_cls, config, inputs, **options)``: :func:`check_parity` in ``tmp_path``."""

    counter = iter(range(1_000_000))

    def run(
        diffusers_cls: type[Any],
        difflux_cls: type[Any],
        config: Mapping[str, Any],
        inputs: Callable[[], dict[str, Any]],
        **options: Any,
    ) -> Parity:
        folder = tmp_path / f"case{next(counter)}"
        folder.mkdir()
        return check_parity(diffusers_cls, difflux_cls, config, inputs, folder, **options)

    return run


def randn(*shape: int, seed: int = 0) -> torch.Tensor:
    """Seeded standard normal noise (float32, CPU)."""
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def copy_weights(src: torch.nn.Module, dst: torch.nn.Module) -> None:
    """Load ``src``'s state dict into ``dst`` strictly (same key names required)."""
    missing, unexpected = dst.load_state_dict(src.state_dict(), strict=False)
    assert not missing and not unexpected, f"missing {missing}, unexpected {unexpected}"


@pytest.fixture
def kit() -> Any:
    """The helpers of this file as one object (test modules cannot import ``conftest``):
    ``kit.check_parity``, ``kit.randn``, ``kit.copy_weights``, ``kit.assert_close``, ``kit.perturb_``,
    ``kit.sample_of``, ``kit.ATOL``."""
    import types

    return types.SimpleNamespace(
        check_parity=check_parity,
        randn=randn,
        copy_weights=copy_weights,
        assert_close=assert_close,
        perturb_=perturb_,
        sample_of=sample_of,
        ATOL=ATOL,
    )
