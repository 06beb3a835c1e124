"""The shortcut that validates plainly-typed configs without building the pydantic model must give
exactly what the pydantic model gives, and leave every other value to it."""

from __future__ import annotations

import itertools
from typing import Any, Literal

import pydantic
import pytest
from difflux.config import _MISS, ConfigMixin, _plain
from difflux.errors import ConfigError

HINTS: list[Any] = [
    Any,
    bool,
    int,
    float,
    str,
    int | None,
    float | None,
    str | None,
    bool | None,
    int | float | None,
    float | int,
    tuple[int, ...],
    tuple[str, ...],
    tuple[float, ...] | None,
    tuple[int, int],
    int | tuple[int, ...],
    int | tuple[int, int] | None,
    bool | tuple[bool, ...],
    int | tuple[int, ...] | tuple[tuple[int, ...], ...],
    tuple[tuple[int, ...], ...] | None,
    list[int],
    list[int] | tuple[int, ...],
    Literal["a", "b"],
    Literal[1, 2, 3],
    Literal["x"] | None,
]
VALUES: list[Any] = [
    None,
    True,
    False,
    0,
    1,
    2,
    2**60,
    1.0,
    1.5,
    float("inf"),
    "a",
    "x",
    "1",
    [],
    (),
    [1, 2],
    (1, 2),
    [1, 2, 3],
    [True, False],
    [1.0, 2.0],
    [1, 2.5],
    ["a", "b"],
    [[1, 2], [3]],
    [(1,), [2, 3]],
    {"a": 1},
]


def _pydantic(hint: Any, value: Any) -> Any:
    model = pydantic.create_model("M", __config__=pydantic.ConfigDict(arbitrary_types_allowed=True), v=(hint, ...))
    try:
        return getattr(model.model_validate({"v": value}), "v")  # noqa: B009
    except pydantic.ValidationError:
        return _MISS


def _same(a: Any, b: Any) -> bool:
    if type(a) is not type(b):
        return False
    if isinstance(a, (tuple, list)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)


@pytest.mark.parametrize(("hint", "value"), list(itertools.product(HINTS, VALUES)), ids=repr)
def test_the_shortcut_answers_only_as_pydantic_does(hint: Any, value: Any) -> None:
    plain = _plain(hint, value)
    if plain is _MISS:
        return  # left to pydantic
    expected = _pydantic(hint, value)
    assert expected is not _MISS, f"the shortcut accepted {value!r} for {hint}, which pydantic rejects"
    assert _same(plain, expected), f"{hint}, {value!r}: shortcut {plain!r}, pydantic {expected!r}"


def test_the_shortcut_covers_what_diffusers_configs_hold() -> None:
    assert _plain(float, 1) == 1.0 and type(_plain(float, 1)) is float
    assert _plain(int | tuple[int, ...], [8, 16]) == (8, 16)
    assert _plain(tuple[str, ...], ["DownBlock2D", "UpBlock2D"]) == ("DownBlock2D", "UpBlock2D")
    assert _plain(str | None, None) is None


class _Plain(ConfigMixin):
    def __init__(self, channels: tuple[int, ...] = (1, 2), scale: float = 1.0, name: str | None = None) -> None:
        pass


class _Odd(ConfigMixin):
    def __init__(self, scale: float = 1.0) -> None:
        pass


def test_plain_configs_do_not_build_the_pydantic_model() -> None:
    obj = _Plain(channels=[3, 4], scale=2)  # type: ignore[arg-type]
    assert obj.config["channels"] == (3, 4)
    assert obj.config["scale"] == 2.0 and type(obj.config["scale"]) is float
    assert "_difflux_config_model" not in _Plain.__dict__


def test_other_values_go_through_pydantic_with_its_conversions_and_errors() -> None:
    assert _Odd(scale="0.5").config["scale"] == 0.5  # type: ignore[arg-type]
    assert "_difflux_config_model" in _Odd.__dict__
    with pytest.raises(ConfigError, match=r"_Odd.*scale"):
        _Odd(scale="big")  # type: ignore[arg-type]
