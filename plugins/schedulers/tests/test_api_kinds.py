"""Issue 10: the scheduler API as Diffusers users call it, the public-report inputs, and the begin-index contract.

Every check compares with Diffusers (the test-only oracle) or with a known value.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import io
import itertools
import warnings
from pathlib import Path
from typing import Any

import difflux_schedulers as S
import pytest
import torch
from difflux.outputs import BaseOutput
from difflux.schedulers import SchedulerOutput
from difflux_schedulers.aliases import SAMPLER_ALIASES
from scheduler_parity import PARITY_ATOL, PARITY_RTOL, assert_parity, diffusers_class, run_loop, stand_in_model
from test_schedule_grid import _SLOW_REFERENCE, CLASSES

REPO = Path(__file__).resolve().parents[3]
# Diffusers' LMS integrand (the oracle) mixes numpy and torch scalars: numpy 2 warns on every evaluation.
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")
STEP_METHODS = ("step", "step_prk", "step_plms", "step_pred", "step_correct")


# -- public reports -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    [
        "DPMSolverMultistepScheduler",
        "UniPCMultistepScheduler",
        "DEISMultistepScheduler",
        "DPMSolverSinglestepScheduler",
    ],
)
def test_report_karras_on_cosine_betas_runs_twenty_steps(name: str) -> None:
    # The timesteps start with one value repeated (998 nine times for DPM-Solver); the last step used to raise.
    ours = getattr(S, name)(beta_schedule="squaredcos_cap_v2", use_karras_sigmas=True)
    ours.set_timesteps(20)
    ts = ours.timesteps.tolist()
    assert ts.count(ts[0]) > 1  # the input of the report: repeated timesteps
    sample = torch.ones(1, 2, 2, 2)
    for k, t in enumerate(ours.timesteps):
        sample = ours.step(0.1 * sample, t, sample).prev_sample
        assert ours.step_index == k + 1
    assert torch.isfinite(sample).all()
    if name == "DPMSolverMultistepScheduler":
        assert ts[:9] == [998] * 9


def test_report_euler_sigmas_as_a_tensor() -> None:
    sigmas = [14.6, 5.0, 1.0, 0.1, 0.0]
    ours = S.EulerDiscreteScheduler()
    ours.set_timesteps(sigmas=torch.tensor(sigmas))
    ref = diffusers_class("EulerDiscreteScheduler")()
    ref.set_timesteps(sigmas=sigmas)
    torch.testing.assert_close(ours.timesteps, ref.timesteps)
    torch.testing.assert_close(ours.sigmas, ref.sigmas)


@pytest.mark.parametrize(
    "config",
    [{"interpolation_type": "log_linear"}, {"timestep_type": "continuous"}],
    ids=["log_linear", "continuous"],
)
@pytest.mark.parametrize("timesteps", [[999, 850, 736, 645, 545, 455, 343, 233, 124, 24], [999.5, 700.25, 300.0]])
def test_report_euler_custom_timesteps_match_diffusers(config: dict[str, Any], timesteps: list[float]) -> None:
    ours, ref = S.EulerDiscreteScheduler(**config), diffusers_class("EulerDiscreteScheduler")(**config)
    ours.set_timesteps(timesteps=timesteps)
    ref.set_timesteps(timesteps=timesteps)
    torch.testing.assert_close(ours.timesteps, ref.timesteps)
    torch.testing.assert_close(ours.sigmas, ref.sigmas)
    assert_parity(S.EulerDiscreteScheduler, config, None, timesteps=timesteps)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.parametrize("steps", [14, 25])
@pytest.mark.parametrize("config", [{"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012}, {}])
def test_report_lms_coefficients_match_diffusers(config: dict[str, Any], steps: int) -> None:
    ours, ref = S.LMSDiscreteScheduler(**config), diffusers_class("LMSDiscreteScheduler")(**config)
    ours.set_timesteps(steps)
    ref.set_timesteps(steps)
    for t in range(steps):
        for order in range(1, min(t + 1, 4) + 1):
            for k in range(order):
                assert abs(ours.get_lms_coefficient(order, t, k) - ref.get_lms_coefficient(order, t, k)) < 1e-10
    assert_parity(S.LMSDiscreteScheduler, config, steps)


def test_report_from_config_of_a_published_ddpm_checkpoint() -> None:
    source = S.DDPMScheduler(variance_type="fixed_small")
    swapped = S.DPMSolverMultistepScheduler.from_config(source.config)
    assert swapped.config["variance_type"] == "fixed_small"  # kept in .config
    ref = diffusers_class("DPMSolverMultistepScheduler").from_config(
        diffusers_class("DDPMScheduler")(variance_type="fixed_small").config
    )
    _, x_ours = run_loop(swapped, 8)
    _, x_ref = run_loop(ref, 8)
    torch.testing.assert_close(x_ours, x_ref, atol=PARITY_ATOL, rtol=PARITY_RTOL)  # and ignored, as Diffusers does


def test_report_step_plms_before_warm_up_is_a_clear_error() -> None:
    scheduler = S.PNDMScheduler()
    sample = torch.ones(1, 1, 2, 2)
    with pytest.raises(RuntimeError, match="set_timesteps"):
        scheduler.step_plms(sample, 999, sample)
    scheduler.set_timesteps(10)
    with pytest.raises(ValueError, match="warm-up"):
        scheduler.step_plms(sample, scheduler.timesteps[0], sample)


# -- positional step arguments, as Diffusers orders them ------------------------------------------------------


def _positional(fn: Any) -> list[str]:
    kinds = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    return [n for n, p in inspect.signature(fn).parameters.items() if p.kind in kinds][1:]


def _step_methods() -> list[tuple[str, str]]:
    return [
        (n, m) for n in CLASSES for m in STEP_METHODS if hasattr(diffusers_class(n), m) and hasattr(getattr(S, n), m)
    ]


@pytest.mark.parametrize(("name", "method"), _step_methods())
def test_step_arguments_in_diffusers_positional_order(name: str, method: str) -> None:
    theirs = _positional(getattr(diffusers_class(name), method))
    ours = _positional(getattr(getattr(S, name), method))
    assert ours[: len(theirs)] == theirs


@pytest.mark.parametrize(
    ("name", "extra", "config"),
    [
        ("DDIMScheduler", (0.5, False, "generator"), {}),  # eta, use_clipped_model_output, generator
        ("DDIMScheduler", (0.0, True), {"clip_sample": True}),  # eta, use_clipped_model_output
        ("LCMScheduler", ("generator",), {}),
        ("DDPMScheduler", ("generator",), {}),
        ("EulerDiscreteScheduler", (0.5, 0.0, float("inf"), 1.0, "generator"), {}),  # s_churn ... generator
        ("EulerAncestralDiscreteScheduler", ("generator",), {}),
        ("KDPM2AncestralDiscreteScheduler", ("generator",), {}),
        ("DPMSolverMultistepScheduler", ("generator",), {"algorithm_type": "sde-dpmsolver++"}),
        ("LMSDiscreteScheduler", (2,), {}),  # order
        ("HeunDiscreteScheduler", (True,), {}),  # return_dict
    ],
)
def test_positional_extras_give_diffusers_results(name: str, extra: tuple[Any, ...], config: dict[str, Any]) -> None:
    results = []
    for scheduler in (getattr(S, name)(**config), diffusers_class(name)(**config)):
        scheduler.set_timesteps(6)
        sample = torch.randn(1, 2, 4, 4, generator=torch.Generator().manual_seed(0)) * scheduler.init_noise_sigma
        gen = torch.Generator().manual_seed(1)
        args = tuple(gen if a == "generator" else a for a in extra)
        for t in scheduler.timesteps:
            model_in = scheduler.scale_model_input(sample, t)
            sample = scheduler.step(stand_in_model(model_in, t), t, sample, *args).prev_sample
        results.append(sample)
    torch.testing.assert_close(results[0], results[1], atol=PARITY_ATOL, rtol=PARITY_RTOL)


@pytest.mark.parametrize("method", ["step_prk", "step_plms"])
@pytest.mark.parametrize("return_dict", [True, False])
def test_pndm_stage_methods_take_return_dict(method: str, return_dict: bool) -> None:
    outs = []
    for scheduler in (
        S.PNDMScheduler(skip_prk_steps=method == "step_plms"),
        diffusers_class("PNDMScheduler")(skip_prk_steps=method == "step_plms"),
    ):
        scheduler.set_timesteps(10)
        sample = torch.randn(1, 1, 2, 2, generator=torch.Generator().manual_seed(0))
        t = scheduler.timesteps[0]
        out = getattr(scheduler, method)(stand_in_model(sample, t), t, sample, return_dict)
        outs.append(out)
    ours, theirs = outs
    if return_dict:
        assert isinstance(ours, SchedulerOutput)
        torch.testing.assert_close(ours.prev_sample, theirs.prev_sample, atol=PARITY_ATOL, rtol=PARITY_RTOL)
    else:
        assert isinstance(ours, tuple) and len(ours) == len(theirs) == 1
        torch.testing.assert_close(ours[0], theirs[0], atol=PARITY_ATOL, rtol=PARITY_RTOL)


# -- output classes behave like Diffusers' BaseOutput ---------------------------------------------------------


def _output_classes() -> list[type[BaseOutput]]:
    import difflux_schedulers.karras_ve
    import difflux_schedulers.lcm
    import difflux_schedulers.score_sde_ve  # noqa: F401 - registers their output classes

    found: list[type[BaseOutput]] = []
    todo = [BaseOutput]
    while todo:
        cls = todo.pop()
        for sub in cls.__subclasses__():
            if sub not in found:
                found.append(sub)
                todo.append(sub)
    return sorted(found, key=lambda c: c.__qualname__)


@pytest.mark.parametrize("cls", _output_classes(), ids=lambda c: c.__qualname__)
def test_every_output_class_behaves_like_diffusers_base_output(cls: type[BaseOutput]) -> None:
    from diffusers.utils import BaseOutput as DiffusersBaseOutput

    # fields declared ``metadata={"view": False}`` (an audio output's sample_rate) are attributes outside the
    # tuple and mapping views: the Diffusers reference has only the viewed fields
    hidden = {f.name: 16000 for f in dataclasses.fields(cls) if not f.metadata.get("view", True)}
    fields = tuple(f for f in dataclasses.fields(cls) if f.name not in hidden)
    values = {f.name: torch.full((1,), float(i + 1)) for i, f in enumerate(fields)}
    ours = cls(**values, **hidden)  # type: ignore[call-arg]
    for name, value in hidden.items():
        assert getattr(ours, name) == value and name not in ours
    ref_cls = dataclasses.make_dataclass(
        f"Ref{cls.__name__}", [(f.name, Any) for f in fields], bases=(DiffusersBaseOutput,)
    )
    ref = ref_cls(**values)
    assert list(ours.keys()) == list(ref.keys())
    assert [v.item() for v in ours.values()] == [v.item() for v in ref.values()]
    assert [(k, v.item()) for k, v in ours.items()] == [(k, v.item()) for k, v in ref.items()]
    assert [v.item() for v in ours.to_tuple()] == [v.item() for v in ref.to_tuple()]
    for i, f in enumerate(fields):
        assert ours[i] is ours[f.name] is getattr(ours, f.name)
        assert ref[i] is ref[f.name]
        assert f.name in ours
    # a field left at None is neither a key nor in the tuple (Diffusers' rule)
    optional = [f for f in fields if f.default is None]
    if optional:
        partial = cls(**{f.name: values[f.name] for f in fields if f not in optional}, **hidden)  # type: ignore[call-arg]
        assert optional[0].name not in partial.keys()  # noqa: SIM118 - keys() is the API under test
        with pytest.raises(KeyError):
            partial[optional[0].name]
        assert len(partial.to_tuple()) == len(fields) - len(optional)


# -- config values as attributes, compatibles, swaps, explicit None -------------------------------------------


@pytest.mark.parametrize("name", CLASSES)
def test_config_values_read_as_attributes_with_diffusers_warning(name: str) -> None:
    ours = getattr(S, name)()
    ref = diffusers_class(name)()
    key = next(k for k in ours.config if not k.startswith("_") and k not in type(ours).__dict__ and k not in vars(ours))
    with warnings.catch_warnings(record=True) as got:
        warnings.simplefilter("always")
        value = getattr(ours, key)
    with warnings.catch_warnings(record=True) as expected:
        warnings.simplefilter("always")
        getattr(ref, key)
    assert value == ours.config[key]
    assert [type(w.message) for w in got] == [type(w.message) for w in expected] == [FutureWarning]
    assert str(got[0].message) == str(expected[0].message).replace(type(ref).__name__, name)
    with pytest.raises(AttributeError, match="no attribute"):
        ours.not_a_config_key  # noqa: B018


@pytest.mark.parametrize("name", CLASSES)
def test_compatibles_include_the_class_itself(name: str) -> None:
    ours = getattr(S, name)()
    ref = diffusers_class(name)()
    assert type(ours) in ours.compatibles
    assert {c.__name__ for c in ours.compatibles} == {c.__name__ for c in ref.compatibles} & set(S.__all__)


def _swaps() -> list[tuple[str, str]]:
    return [
        (a, b)
        for a, b in itertools.permutations(CLASSES, 2)
        if b in {c.__name__ for c in getattr(S, a).compatible_classes()}
    ]


#: a non-default value for each key the Karras family shares, as the published checkpoints carry them
_SOURCE_VALUES = {
    "variance_type": "fixed_small_log",
    "timestep_spacing": "leading",
    "steps_offset": 1,
    "prediction_type": "epsilon",
    "clip_sample": False,
    "set_alpha_to_one": False,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "algorithm_type": "dpmsolver++",
    "solver_type": "midpoint",
    "interpolation_type": "linear",
    "skip_prk_steps": True,
}


@pytest.mark.parametrize(("source", "target"), _swaps())
def test_from_config_swaps_across_compatible_classes(source: str, target: str) -> None:
    params = getattr(S, source).init_parameter_names()
    config = {k: v for k, v in _SOURCE_VALUES.items() if k in params}
    built = getattr(S, source).from_config(config)  # values the source does not take are kept, too
    swapped = getattr(S, target).from_config(built.config)
    for key, value in config.items():
        assert swapped.config[key] == value or key in ("algorithm_type", "solver_type"), key  # kept in .config
    swapped.set_timesteps(6)
    if {source, target} & set(_SLOW_REFERENCE):  # Diffusers builds 1000 steps in these classes' __init__
        assert len(swapped.timesteps) >= 6
        return
    try:
        ref = diffusers_class(target).from_config(diffusers_class(source).from_config(config).config)
        ref.set_timesteps(6)
    except Exception:
        assert len(swapped.timesteps) >= 6
        return
    torch.testing.assert_close(torch.as_tensor(swapped.timesteps).double(), torch.as_tensor(ref.timesteps).double())


def test_from_config_still_refuses_a_bad_override() -> None:
    from difflux.errors import ConfigError

    with pytest.raises(ConfigError, match="variance_type"):
        S.DDPMScheduler.from_config(S.DDPMScheduler().config, variance_type="not-a-variance")


@pytest.mark.parametrize("name", CLASSES)
def test_explicit_none_for_optional_values_is_accepted(name: str) -> None:
    ref_params = inspect.signature(diffusers_class(name).__init__).parameters
    optional = [
        n
        for n, p in ref_params.items()
        if n in getattr(S, name).init_parameter_names() and "None" in str(p.annotation) and p.default is not None
    ]
    default = getattr(S, name)()
    default.set_timesteps(5, **({"mu": 0.5} if default.config.get("use_dynamic_shifting") else {}))
    for key in optional:
        ours = getattr(S, name)(**{key: None})  # accepted: None means "not set", as in Diffusers
        assert ours.config[key] in (None, default.config[key]), key
        ours.set_timesteps(5)
        torch.testing.assert_close(ours.timesteps, default.timesteps)  # and behaves as the default


# -- a fresh scheduler holds the training schedule ------------------------------------------------------------


@pytest.mark.parametrize("name", [n for n in CLASSES if n not in ("KarrasVeScheduler",)])
def test_fresh_scheduler_holds_the_training_schedule(name: str) -> None:
    ours, ref = getattr(S, name)(), diffusers_class(name)()
    if ref.timesteps is not None:  # Diffusers' fresh PNDM holds none; difflux holds the training timesteps
        torch.testing.assert_close(torch.as_tensor(ours.timesteps).double(), torch.as_tensor(ref.timesteps).double())
    else:
        assert ours.timesteps.tolist() == list(range(ours.config.num_train_timesteps - 1, -1, -1))
    x = torch.randn(2, 1, 2, 2, generator=torch.Generator().manual_seed(0))
    noise = torch.randn(2, 1, 2, 2, generator=torch.Generator().manual_seed(1))
    t = torch.as_tensor(ours.timesteps)[[1, len(ours.timesteps) // 2]]
    noisy = ours.add_noise(x, noise, t)
    if hasattr(ref, "add_noise") and name not in ("ScoreSdeVeScheduler",):
        torch.testing.assert_close(noisy, ref.add_noise(x, noise, t), atol=1e-5, rtol=1e-5)
    try:
        ref_out = ref.step(0.1 * x, ref.timesteps[0], x)
    except Exception:
        with pytest.raises(RuntimeError, match="set_timesteps"):
            ours.step(0.1 * x, ours.timesteps[0], x)
        return
    out = ours.step(0.1 * x, ours.timesteps[0], x)
    if name not in ("CMStochasticIterativeScheduler", "DDPMScheduler", "EulerAncestralDiscreteScheduler"):
        torch.testing.assert_close(out.prev_sample, ref_out.prev_sample, atol=1e-5, rtol=1e-5)  # deterministic ones
    assert torch.isfinite(out.prev_sample).all()


# -- the begin-index contract ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    ["HeunDiscreteScheduler", "KDPM2DiscreteScheduler", "KDPM2AncestralDiscreteScheduler", "EulerDiscreteScheduler"],
)
@pytest.mark.parametrize("start_step", [0, 3, 7])
def test_begin_index_runs_like_diffusers(name: str, start_step: int) -> None:
    results = []
    for scheduler in (getattr(S, name)(), diffusers_class(name)()):
        scheduler.set_timesteps(10)
        begin = start_step * scheduler.order
        scheduler.set_begin_index(begin)
        sample = torch.randn(1, 2, 4, 4, generator=torch.Generator().manual_seed(0)) * 3.0
        gen = torch.Generator().manual_seed(1)
        for t in scheduler.timesteps[begin:]:
            model_in = scheduler.scale_model_input(sample, t)
            kwargs = {"generator": gen} if "generator" in inspect.signature(scheduler.step).parameters else {}
            sample = scheduler.step(stand_in_model(model_in, t), t, sample, **kwargs).prev_sample
        assert scheduler.step_index == len(scheduler.timesteps)
        results.append(sample)
    torch.testing.assert_close(results[0], results[1], atol=PARITY_ATOL, rtol=PARITY_RTOL)


@pytest.mark.parametrize("name", CLASSES)
def test_every_scheduler_has_the_cut_contract(name: str) -> None:
    # What the pipelines' schedule cut relies on: order, timesteps, set_begin_index(int), and a step
    # index that counts from the begin index.
    scheduler = getattr(S, name)()
    assert isinstance(scheduler.order, int) and scheduler.order in (1, 2)
    params = inspect.signature(scheduler.set_begin_index).parameters
    assert list(params) == ["begin_index"]
    scheduler.set_timesteps(4 if name != "PNDMScheduler" else 5)
    assert isinstance(scheduler.timesteps, torch.Tensor) and scheduler.timesteps.ndim == 1
    with pytest.raises(ValueError, match="begin_index"):
        scheduler.set_begin_index(len(scheduler.timesteps))


# -- the CLI example and every sampler alias on the embedded digits model -------------------------------------


@pytest.fixture(scope="module")
def digits() -> Any:
    from difflux import DiffusionPipeline

    return DiffusionPipeline.from_pretrained("difflux:digits")


def test_cli_generate_with_dpmpp_2m_karras(tmp_path: Path) -> None:
    from difflux import cli

    out = io.StringIO()
    target = tmp_path / "digits.png"
    code = cli.main(
        ["generate", "--scheduler", "DPM++ 2M Karras", "--steps", "3", "--num-images", "1", "--output", str(target)],
        out=out,
    )
    assert code == 0, out.getvalue()
    assert target.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _one_alias_per_class() -> list[str]:
    seen: dict[str, str] = {}
    for alias, (cls_name, _) in sorted(SAMPLER_ALIASES.items()):
        seen.setdefault(cls_name, alias)
    return sorted(seen.values())


def _alias_params() -> list[Any]:
    fast = set(_one_alias_per_class()) | {"DPM++ 2M Karras"}
    return [a if a in fast else pytest.param(a, marks=pytest.mark.slow) for a in sorted(SAMPLER_ALIASES)]


@pytest.mark.parametrize("alias", sorted(SAMPLER_ALIASES))
def test_every_sampler_alias_swaps_into_the_digits_scheduler_and_samples(digits: Any, alias: str) -> None:
    # Every alias, cheaply: the CLI's swap from the digits model's scheduler config, then a 4-step loop.
    from difflux.cli import _scheduler_for

    scheduler = _scheduler_for(digits, alias)
    cls_name, overrides = SAMPLER_ALIASES[alias]
    assert type(scheduler).__name__ == cls_name
    for key, value in overrides.items():
        assert scheduler.config[key] == value
    _, sample = run_loop(scheduler, 4, shape=(1, 1, 4, 4))
    assert torch.isfinite(sample).all()


@pytest.mark.parametrize("alias", _alias_params())
def test_sampler_alias_runs_the_digits_pipeline(digits: Any, alias: str) -> None:
    # One alias per scheduler class by default (all of them with --run-slow): the real UNet, 4 steps.
    from difflux.cli import _scheduler_for

    original = digits.scheduler
    try:
        digits.scheduler = _scheduler_for(digits, alias)
        image = digits(
            batch_size=1,
            num_inference_steps=4,  # PNDM's Runge-Kutta warm-up needs 4
            generator=torch.Generator().manual_seed(0),
            output_type="np",
            class_labels=7,
        ).images
        assert image.shape[0] == 1 and bool((image == image).all())  # finite (no NaN)
    finally:
        digits.scheduler = original


# -- no bare assert in shipped code ---------------------------------------------------------------------------


def test_no_bare_assert_in_shipped_code() -> None:
    roots = [REPO / "core" / "src", *sorted((REPO / "plugins").glob("*/src"))]
    found = []
    for root in roots:
        for path in root.rglob("*.py"):
            if "testing" in path.relative_to(root).parts:  # the conformance kits are test code
                continue
            tree = ast.parse(path.read_text(encoding="utf-8"))
            found += [f"{path.relative_to(REPO)}:{n.lineno}" for n in ast.walk(tree) if isinstance(n, ast.Assert)]
    assert not found, "bare asserts (raise a clear error instead):\n" + "\n".join(found)
