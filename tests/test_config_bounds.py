"""Every bounded config field of every installed model and scheduler class refuses values out of
its range (and NaN), and takes its default; the Diffusers size families are bounded in every
class that has them, so a hostile config cannot make a build hang or allocate without end."""

from __future__ import annotations

import math
import time
from typing import Any

import pytest
from difflux import get_registry
from difflux.config import Bound, ConfigMixin
from difflux.errors import ConfigError
from difflux.registry import reset_registry


def _classes() -> list[type[ConfigMixin]]:
    reset_registry()
    registry = get_registry()
    found: dict[str, type[ConfigMixin]] = {}
    for library, name in sorted(registry.components):
        if library != "diffusers":
            continue
        cls = registry.component_class(library, name)
        if isinstance(cls, type) and issubclass(cls, ConfigMixin):
            found[cls.__qualname__] = cls
    for name in sorted(registry.schedulers):
        cls = registry.scheduler_class(name)
        if isinstance(cls, type) and issubclass(cls, ConfigMixin):  # Flax schedulers validate through these
            found[cls.__qualname__] = cls
    return [found[k] for k in sorted(found)]


def _required(cls: type[ConfigMixin]) -> dict[str, Any] | None:
    """Values in range for the arguments ``cls`` requires (``None`` when one of them is not a number)."""
    bounds = cls._config_bounds()
    out: dict[str, Any] = {}
    for name, (hint, default) in cls._config_fields().items():
        if default is not ...:
            continue
        if name not in bounds and hint not in (int, float):
            return None
        low = [b.ge if b.ge is not None else (b.gt + 1 if b.gt is not None else 1) for b in bounds.get(name, ())]
        out[name] = int(max(low, default=1))
    return out


ALL_CLASSES = _classes()
#: Classes that require an object (``MultiControlNetModel(controlnets)``): their config has no numbers to check alone.
NEED_OBJECTS = [cls for cls in ALL_CLASSES if _required(cls) is None]
CLASSES = [cls for cls in ALL_CLASSES if _required(cls) is not None]
REQUIRED = {cls: _required(cls) or {} for cls in CLASSES}


def _outside(bound: Bound) -> list[Any]:
    """Numbers just outside ``bound`` (and NaN, and inf where it is not allowed)."""
    out: list[Any] = [math.nan]
    if bound.le is not None:
        out.append(int(bound.le) + 1 if float(bound.le).is_integer() else bound.le * 2 + 1)
    if bound.lt is not None:
        out.append(bound.lt)
    if bound.ge is not None:
        out.append(int(bound.ge) - 1 if float(bound.ge).is_integer() else bound.ge - 1)
    if bound.gt is not None:
        out.append(bound.gt)
    if not bound.allow_inf:
        out.append(math.inf)
    return out


def _cases() -> list[tuple[type[ConfigMixin], str, Any]]:
    cases: list[tuple[type[ConfigMixin], str, Any]] = []
    for cls in CLASSES:
        fields = cls._config_fields()
        for name, bounds in sorted(cls._config_bounds().items()):
            default = fields[name][1] if fields[name][1] is not ... else REQUIRED[cls][name]
            for bound in bounds:
                for bad in _outside(bound):
                    # a tuple default gets the bad number as one of its items
                    value = (*default[:-1], bad) if isinstance(default, tuple) and default else bad
                    cases.append((cls, name, value))
                if bound.max_items is not None and bound.max_items < 10**4:
                    item = default[0] if isinstance(default, tuple) and default else 1
                    cases.append((cls, name, (item,) * (bound.max_items + 1)))
    return cases


CASES = _cases()


def test_every_class_is_covered() -> None:
    assert len(NEED_OBJECTS) <= len(ALL_CLASSES) // 10, NEED_OBJECTS  # almost every class is swept
    names = {cls.__name__ for cls in CLASSES}
    assert {"UNet2DModel", "UNet2DConditionModel", "AutoencoderKL", "DDPMScheduler", "EulerDiscreteScheduler"} <= names
    assert len(CASES) > 500


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_defaults_lie_in_range(cls: type[ConfigMixin]) -> None:
    kwargs, _ = cls._validated_init_kwargs((), dict(REQUIRED[cls]))
    for name, bounds in cls._config_bounds().items():
        assert all(b.problem(kwargs[name]) is None for b in bounds), name


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_the_size_families_are_bounded_wherever_they_appear(cls: type[ConfigMixin]) -> None:
    families = {
        "in_channels",
        "out_channels",
        "block_out_channels",
        "layers_per_block",
        "num_layers",
        "norm_num_groups",
        "attention_head_dim",
        "num_attention_heads",
        "cross_attention_dim",
        "sample_size",
        "num_train_timesteps",
        "beta_start",
        "beta_end",
    }
    present = families & set(cls._config_fields())
    assert present <= set(cls._config_bounds()), present - set(cls._config_bounds())


@pytest.mark.parametrize(("cls", "name", "value"), CASES, ids=[f"{c.__name__}.{n}={v!r}"[:80] for c, n, v in CASES])
def test_values_out_of_range_are_refused_naming_the_field(cls: type[ConfigMixin], name: str, value: Any) -> None:
    with pytest.raises(ConfigError, match=rf"invalid config for {cls.__name__}: {name}\b"):
        cls._validated_init_kwargs((), {**REQUIRED[cls], name: value})


@pytest.mark.parametrize(
    ("class_name", "key", "value"),
    [
        ("UNet2DModel", "layers_per_block", 10**9),
        ("UNet2DConditionModel", "layers_per_block", 10**9),
        ("UNet2DModel", "block_out_channels", [2_000_000_000, 2_000_000_000, 2_000_000_000, 2_000_000_000]),
        ("AutoencoderKL", "norm_num_groups", 3_000_000_000),
        ("UNet2DConditionModel", "cross_attention_dim", 10**10),
        ("DDPMScheduler", "num_train_timesteps", 10**12),
        ("DDPMScheduler", "beta_start", math.nan),
    ],
)
def test_hostile_sizes_are_refused_at_once(class_name: str, key: str, value: Any) -> None:
    cls = next(c for c in CLASSES if c.__name__ == class_name)
    start = time.perf_counter()
    with pytest.raises(ConfigError, match=key):
        cls.from_config({**REQUIRED[cls], key: value})
    assert time.perf_counter() - start < 2
