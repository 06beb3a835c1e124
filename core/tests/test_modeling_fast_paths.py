"""The shortcuts of ModelMixin loading: initialisers skipped on meta tensors, tensors assigned
without ``load_state_dict`` unless a module customises loading."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from difflux.modeling import ModelMixin, parameters_on_meta


class _Legacy(torch.nn.Module):
    """A module with its own ``_load_from_state_dict`` (it counts its calls)."""

    calls = 0

    def __init__(self) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(3))

    def _load_from_state_dict(self, *args: Any, **kwargs: Any) -> None:
        type(self).calls += 1
        super()._load_from_state_dict(*args, **kwargs)


class _Net(ModelMixin):
    def __init__(self, dim: int = 4) -> None:
        super().__init__()
        self.lin = torch.nn.Linear(dim, dim)
        self.emb = torch.nn.Embedding(5, dim)
        self.norm = torch.nn.LayerNorm(dim)
        self.register_buffer("table", torch.arange(dim, dtype=torch.float32))


class _LegacyNet(ModelMixin):
    def __init__(self) -> None:
        super().__init__()
        self.legacy = _Legacy()
        self.lin = torch.nn.Linear(3, 3)


def test_initialisers_leave_meta_tensors_alone_and_are_restored() -> None:
    originals = {name: getattr(torch.nn.init, name) for name in ("uniform_", "kaiming_uniform_", "normal_")}
    with parameters_on_meta():
        assert torch.nn.init.kaiming_uniform_ is not originals["kaiming_uniform_"]
        meta = torch.empty(3, 3, device="meta")
        assert torch.nn.init.uniform_(meta) is meta
        real = torch.zeros(1000)
        torch.nn.init.uniform_(real)  # real tensors (buffers) are still initialised
        assert real.abs().sum() > 0
        net = _Net()
    assert {name: getattr(torch.nn.init, name) for name in originals} == originals
    assert net.lin.weight.device.type == "meta"
    assert torch.equal(net.get_buffer("table"), torch.arange(4, dtype=torch.float32))


def test_loaded_tensors_are_parameters_with_their_values(tmp_path: Path) -> None:
    torch.manual_seed(0)
    src = _Net()
    src.save_pretrained(tmp_path)
    loaded = _Net.from_pretrained(tmp_path)
    for (name, a), (_, b) in zip(src.state_dict().items(), loaded.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
    assert all(isinstance(p, torch.nn.Parameter) and p.requires_grad for p in loaded.parameters())
    assert dict(loaded.named_parameters()).keys() == dict(src.named_parameters()).keys()
    assert "table" in dict(loaded.named_buffers())


def test_a_module_with_its_own_loading_is_loaded_through_it(tmp_path: Path) -> None:
    torch.manual_seed(0)
    src = _LegacyNet()
    with torch.no_grad():
        src.legacy.weight.copy_(torch.tensor([1.0, 2.0, 3.0]))
    src.save_pretrained(tmp_path)
    _Legacy.calls = 0
    loaded = _LegacyNet.from_pretrained(tmp_path)
    assert _Legacy.calls == 1
    assert torch.equal(loaded.legacy.weight, torch.tensor([1.0, 2.0, 3.0]))
    assert torch.equal(loaded.lin.weight, src.lin.weight)
    assert isinstance(loaded.legacy.weight, torch.nn.Parameter)
