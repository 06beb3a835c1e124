"""Offload strategies on a toy three-model pipeline, with ``cpu`` and ``meta`` execution devices.

With ``meta`` as the execution device the weights a model runs with are ``meta`` tensors, so the
place of every model's weights while each one runs tells which were onloaded; with ``cpu`` the
outputs are compared with the plain pipeline's.
"""

from __future__ import annotations

import types
from collections.abc import Iterator
from typing import Any

import difflux
import pytest
import torch
from difflux import DiffusionPipeline
from difflux.errors import ConfigError
from difflux.offload import OffloadPlan, runs_forward_hooks
from difflux.registry import get_registry, reset_registry

MODELS = ("encoder", "denoiser", "decoder")


def _where(pipe: Any) -> dict[str, str]:
    """The device type of a leaf weight of every model (``meta``: onloaded to the meta device, or a
    placeholder under sequential offload)."""
    return {
        "encoder": pipe.encoder.proj.weight.device.type,
        "denoiser": pipe.denoiser.blocks[0].weight.device.type,
        "decoder": pipe.decoder.out.weight.device.type,
    }


class Recorder:
    def __init__(self) -> None:
        self.pipe: DiffusionPipeline | None = None
        self.seen: list[tuple[str, dict[str, str]]] = []

    def __call__(self, name: str) -> None:
        assert self.pipe is not None
        self.seen.append((name, _where(self.pipe)))


class Encoder(torch.nn.Module):
    def __init__(self, record: Recorder) -> None:
        super().__init__()
        self.record = record
        self.proj = torch.nn.Linear(4, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.record("encoder")
        return self.proj(x)


class Block(torch.nn.Linear):
    """A linear layer that calls ``probe`` from inside its forward (where offload hooks have run)."""

    probe: Any = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if Block.probe is not None:
            Block.probe(self)
        return super().forward(x)


class Denoiser(torch.nn.Module):
    def __init__(self, record: Recorder) -> None:
        super().__init__()
        self.record = record
        self.blocks = torch.nn.ModuleList([Block(8, 8) for _ in range(4)])
        self.norm = torch.nn.LayerNorm(8)
        self.scale = torch.nn.Parameter(torch.tensor(0.5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.record("denoiser")
        for block in self.blocks:
            x = torch.tanh(block(x))
        return self.norm(x) * self.scale


class Decoder(torch.nn.Module):
    def __init__(self, record: Recorder) -> None:
        super().__init__()
        self.record = record
        self.out = torch.nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(x)

    @runs_forward_hooks
    def decode(self, x: torch.Tensor) -> torch.Tensor:
        self.record("decoder")
        return self.out(x)


class ToyPipeline(DiffusionPipeline):
    model_cpu_offload_seq = "encoder->denoiser->decoder"

    def __init__(self, encoder: torch.nn.Module, denoiser: torch.nn.Module, decoder: torch.nn.Module) -> None:
        super().__init__()
        self.register_modules(encoder=encoder, denoiser=denoiser, decoder=decoder)

    def __call__(self, x: torch.Tensor, steps: int = 3) -> torch.Tensor:
        h = self.encoder(x.to(self.device))
        for _ in range(steps):
            h = self.denoiser(h)
        return self.decoder.decode(h)


def _toy(seed: int = 0) -> tuple[ToyPipeline, Recorder]:
    torch.manual_seed(seed)
    record = Recorder()
    pipe = ToyPipeline(Encoder(record), Denoiser(record), Decoder(record))
    record.pipe = pipe
    return pipe, record


X = torch.linspace(-1, 1, 8).reshape(2, 4)


# -- each model on the execution device only while it runs -------------------------------------


def test_model_offload_onloads_one_model_at_a_time() -> None:
    pipe, record = _toy()
    pipe.enable_model_cpu_offload(device="meta")
    assert pipe.device == torch.device("meta") == pipe._execution_device
    out = pipe(X)
    assert out.device.type == "meta" and out.shape == (2, 3)
    assert record.seen == [
        ("encoder", {"encoder": "meta", "denoiser": "cpu", "decoder": "cpu"}),
        *[("denoiser", {"encoder": "cpu", "denoiser": "meta", "decoder": "cpu"})] * 3,
        ("decoder", {"encoder": "cpu", "denoiser": "cpu", "decoder": "meta"}),
    ]
    # the end of __call__ freed the hooks: everything is back on the CPU, the weights intact
    assert _where(pipe) == dict.fromkeys(MODELS, "cpu")
    pipe.remove_all_hooks()
    torch.testing.assert_close(pipe(X), _toy()[0](X), rtol=0, atol=0)


def test_sequential_offload_keeps_weights_off_device_between_leaves() -> None:
    pipe, record = _toy()
    pipe.enable_sequential_cpu_offload(device="cpu")
    pipe(X)
    # between leaf calls every weight is a meta placeholder; the CPU copy lives in accelerate's map
    assert all(places == dict.fromkeys(MODELS, "meta") for _, places in record.seen)
    assert [name for name, _ in record.seen] == ["encoder", "denoiser", "denoiser", "denoiser", "decoder"]
    inside: list[str] = []
    pipe.denoiser.blocks[0].register_forward_hook(lambda m, a, o: inside.append(str(o.device)))
    pipe(X)
    assert inside == ["cpu"] * 3
    assert _where(pipe) == dict.fromkeys(MODELS, "meta")


def test_group_offload_onloads_groups_in_turn() -> None:
    pipe, record = _toy()
    pipe.enable_group_offload("meta", offload_type="block_level", num_blocks_per_group=2)
    places: list[tuple[str, ...]] = []
    Block.probe = lambda block: places.append(tuple(b.weight.device.type for b in pipe.denoiser.blocks))
    try:
        pipe(X, steps=1)
    finally:
        Block.probe = None
    # blocks 0-1 are one group, 2-3 the next: only the running group is on the device
    assert places == [("meta", "meta", "cpu", "cpu")] * 2 + [("cpu", "cpu", "meta", "meta")] * 2
    # the denoiser's own tensors (norm, scale) form its top-level group, on the device while it runs
    assert ("denoiser", {"encoder": "cpu", "denoiser": "cpu", "decoder": "cpu"}) in record.seen
    assert _where(pipe) == dict.fromkeys(MODELS, "cpu")


def test_group_offload_leaf_level() -> None:
    pipe, _ = _toy()
    pipe.enable_group_offload("meta", offload_type="leaf_level")
    seen: list[tuple[str, str, str]] = []
    blocks = pipe.denoiser.blocks
    Block.probe = lambda block: seen.append((block.weight.device.type, blocks[0].weight.device.type,
                                             pipe.denoiser.norm.weight.device.type))
    try:
        pipe(X, steps=1)
    finally:
        Block.probe = None
    # each leaf is on the device only inside its own forward
    assert seen == [("meta", "meta", "cpu")] + [("meta", "cpu", "cpu")] * 3


@pytest.mark.parametrize(
    "enable",
    [
        lambda p: p.enable_model_cpu_offload(device="cpu"),
        lambda p: p.enable_sequential_cpu_offload(device="cpu"),
        lambda p: p.enable_group_offload("cpu", num_blocks_per_group=1),
        lambda p: p.enable_group_offload("cpu", offload_type="leaf_level", use_stream=False),
    ],
    ids=["model", "sequential", "group-block", "group-leaf"],
)
def test_outputs_equal_the_plain_pipeline(enable: Any) -> None:
    plain, _ = _toy()
    expected = plain(X)
    pipe, _ = _toy()
    enable(pipe)
    torch.testing.assert_close(pipe(X), expected, rtol=0, atol=0)
    torch.testing.assert_close(pipe(X), expected, rtol=0, atol=0)  # the hooks re-arm after each call


# -- freeing, enabling twice, .to() --------------------------------------------------------------


def test_maybe_free_model_hooks_leaves_everything_offloaded() -> None:
    pipe, _ = _toy()
    pipe.enable_model_cpu_offload(device="meta")
    pipe.encoder(X.to("meta"))
    pipe.denoiser(torch.zeros(2, 8, device="meta"))
    assert _where(pipe) == {"encoder": "cpu", "denoiser": "meta", "decoder": "cpu"}
    pipe.maybe_free_model_hooks()
    assert _where(pipe) == dict.fromkeys(MODELS, "cpu")
    pipe.encoder(X.to("meta"))  # hooks still armed
    assert _where(pipe)["encoder"] == "meta"
    pipe.maybe_free_model_hooks()


def test_free_runs_when_a_call_fails() -> None:
    pipe, _ = _toy()
    pipe.enable_model_cpu_offload(device="meta")
    with pytest.raises(RuntimeError):
        pipe(torch.zeros(2, 5))  # wrong width: the encoder fails after being onloaded
    assert _where(pipe) == dict.fromkeys(MODELS, "cpu")


def test_enabling_twice_replaces_the_hooks() -> None:
    pipe, record = _toy()
    pipe.enable_model_cpu_offload(device="meta")
    pipe.enable_model_cpu_offload(device="meta")
    pipe.enable_sequential_cpu_offload(device="cpu")  # another strategy replaces the first
    assert _where(pipe) == dict.fromkeys(MODELS, "meta")
    pipe.enable_model_cpu_offload(device="meta")  # and back: sequential's meta weights are restored first
    assert _where(pipe) == dict.fromkeys(MODELS, "cpu")
    pipe(X, steps=1)
    assert [n for n, _ in record.seen] == ["encoder", "denoiser", "decoder"]
    pipe.remove_all_hooks()
    torch.testing.assert_close(pipe(X), _toy()[0](X), rtol=0, atol=0)


def test_to_accelerator_after_offload_is_refused() -> None:
    pipe, _ = _toy()
    pipe.enable_model_cpu_offload(device="meta")
    with pytest.raises(ConfigError, match=r"remove_all_hooks\(\)"):
        pipe.to("cuda")
    with pytest.raises(ConfigError, match="offload"):
        pipe.to("meta")
    assert pipe.device == torch.device("meta")  # nothing changed


def test_to_cpu_after_offload_removes_the_hooks() -> None:
    pipe, _ = _toy()
    pipe.enable_sequential_cpu_offload(device="cpu")
    pipe.to("cpu")
    assert _where(pipe) == dict.fromkeys(MODELS, "cpu")
    assert not any(hasattr(m, "_hf_hook") for _, mod in pipe._torch_modules() for m in mod.modules())
    assert difflux.offload.active(pipe) is None
    torch.testing.assert_close(pipe(X), _toy()[0](X), rtol=0, atol=0)


def test_dtype_cast_keeps_the_offload() -> None:
    pipe, _ = _toy()
    pipe.enable_model_cpu_offload(device="cpu")
    pipe.to(torch.float64)
    state = difflux.offload.active(pipe)
    assert state is not None and state.strategy == "model"
    assert pipe(X.double()).dtype == torch.float64
    assert pipe.encoder.proj.weight.dtype == torch.float64


def test_excluded_components_stay_on_the_execution_device() -> None:
    pipe, _ = _toy()
    pipe._exclude_from_cpu_offload = ("decoder",)  # type: ignore[misc]
    pipe.enable_model_cpu_offload(device="cpu")
    assert not hasattr(pipe.decoder, "_hf_hook")
    assert hasattr(pipe.encoder, "_hf_hook")


def test_bad_arguments_are_refused() -> None:
    pipe, _ = _toy()
    with pytest.raises(ConfigError, match="not a torch device"):
        pipe.enable_model_cpu_offload(device="gpu")
    with pytest.raises(ConfigError, match="gpu_id=0"):
        pipe.enable_model_cpu_offload(gpu_id=0, device="cuda:1")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="no cuda device is available"):
            pipe.enable_model_cpu_offload()
    with pytest.raises(ConfigError, match=r"unknown offload strategy 'nope'.*group, model"):
        pipe.enable_offload("nope", device="cpu")
    with pytest.raises(ConfigError, match="offload_type"):
        pipe.enable_group_offload("cpu", offload_type="row_level")
    with pytest.raises(ConfigError, match="num_blocks_per_group"):
        pipe.enable_group_offload("cpu", num_blocks_per_group=0)
    with pytest.raises(ConfigError, match="takes no option"):
        pipe.enable_offload("model", device="cpu", num_blocks_per_group=2)
    assert difflux.offload.active(pipe) is None


def test_model_offload_needs_a_declared_sequence() -> None:
    class Undeclared(ToyPipeline):
        model_cpu_offload_seq = None

    record = Recorder()
    pipe = Undeclared(Encoder(record), Denoiser(record), Decoder(record))
    with pytest.raises(ConfigError, match="declares no model_cpu_offload_seq"):
        pipe.enable_model_cpu_offload(device="cpu")

    class Wrong(ToyPipeline):
        model_cpu_offload_seq = "encoder->unet"

    with pytest.raises(ConfigError, match="names unet"):
        Wrong(Encoder(record), Denoiser(record), Decoder(record)).enable_model_cpu_offload(device="cpu")


def test_group_offload_on_a_model() -> None:
    torch.manual_seed(0)
    model = Denoiser(lambda name: None)  # type: ignore[arg-type]
    expected = model(torch.ones(2, 8))
    difflux.offload.apply_group_offload(model, torch.device("cpu"), num_blocks_per_group=3)
    torch.testing.assert_close(model(torch.ones(2, 8)), expected, rtol=0, atol=0)


# -- a third-party strategy through the hook -----------------------------------------------------


class Spy:
    """A strategy that records what it is given and what is asked of it."""

    calls: list[Any] = []

    def __init__(self, models: dict[str, torch.nn.Module], plan: OffloadPlan) -> None:
        Spy.calls.append(("apply", tuple(models), plan.execution_device, plan.sequence, dict(plan.options)))

    def free(self) -> None:
        Spy.calls.append("free")

    def remove(self) -> None:
        Spy.calls.append("remove")


@pytest.fixture
def spy_plugin() -> Iterator[None]:
    plugin = types.SimpleNamespace()

    @difflux.hookimpl
    def difflux_register_offload_strategies(register: Any) -> None:
        register("spy", Spy)

    plugin.difflux_register_offload_strategies = difflux_register_offload_strategies
    reset_registry([("spy-plugin", plugin)])
    Spy.calls = []
    try:
        yield
    finally:
        reset_registry()


def test_third_party_strategy_receives_the_calls(spy_plugin: None) -> None:
    registry = get_registry()
    assert registry.offload_strategies["spy"].plugin == "spy-plugin"
    assert registry.offload_strategies["model"].plugin == "difflux"  # core's own, through the same hook
    pipe, _ = _toy()
    pipe.enable_offload("spy", device="cpu", budget=3)
    assert pipe.device == torch.device("cpu")
    pipe(X, steps=1)
    pipe.remove_all_hooks()
    assert Spy.calls == [
        ("apply", ("encoder", "denoiser", "decoder"), torch.device("cpu"), MODELS, {"budget": 3}),
        "free",
        "remove",
    ]


def test_strategy_name_clash_is_an_error() -> None:
    plugin = types.SimpleNamespace()

    @difflux.hookimpl
    def difflux_register_offload_strategies(register: Any) -> None:
        register("model", Spy)

    plugin.difflux_register_offload_strategies = difflux_register_offload_strategies
    try:
        with pytest.raises(difflux.errors.PluginConflictError, match="offload strategy 'model'"):
            reset_registry([("clash", plugin)])
    finally:
        reset_registry()


def test_group_offload_on_a_model_mixin() -> None:
    from difflux.modeling import ModelMixin

    class Net(ModelMixin):
        def __init__(self, width: int = 8) -> None:
            super().__init__()
            self.blocks = torch.nn.ModuleList([Block(width, width) for _ in range(3)])

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            for block in self.blocks:
                x = block(x)
            return x

    torch.manual_seed(0)
    net = Net().eval()
    expected = net(torch.ones(1, 8))
    net.enable_group_offload("meta", num_blocks_per_group=2)
    seen: list[tuple[str, ...]] = []
    Block.probe = lambda block: seen.append(tuple(b.weight.device.type for b in net.blocks))
    try:
        assert net(torch.ones(1, 8)).device.type == "meta"
    finally:
        Block.probe = None
    assert seen == [("meta", "meta", "cpu")] * 2 + [("cpu", "cpu", "meta")]
    net.disable_group_offload()
    assert not any(hasattr(m, "_hf_hook") for m in net.modules())
    torch.testing.assert_close(net(torch.ones(1, 8)), expected, rtol=0, atol=0)
    with pytest.raises(ConfigError, match="keeps weights on the CPU"):
        net.enable_group_offload("cpu", offload_device="cuda")


# -- on a real accelerator ---------------------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize(
    "enable",
    [
        lambda p: p.enable_model_cpu_offload(),
        lambda p: p.enable_sequential_cpu_offload(),
        lambda p: p.enable_group_offload("cuda", num_blocks_per_group=1, use_stream=True),
        lambda p: p.enable_group_offload("cuda", offload_type="leaf_level", use_stream=True),
    ],
    ids=["model", "sequential", "group-block-stream", "group-leaf-stream"],
)
def test_offload_on_cuda_gives_the_cuda_output(enable: Any) -> None:
    plain, _ = _toy()
    expected = plain.to("cuda")(X).cpu()
    pipe, _ = _toy()
    enable(pipe)
    assert pipe.device.type == "cuda"
    for _ in range(3):  # the first call records the group order, later ones prefetch along it
        torch.testing.assert_close(pipe(X).cpu(), expected, rtol=1e-6, atol=1e-6)
    weights = [pipe.encoder.proj.weight, pipe.denoiser.blocks[0].weight, pipe.decoder.out.weight]
    assert all(w.device.type in ("cpu", "meta") for w in weights)  # nothing left on the GPU after the call
