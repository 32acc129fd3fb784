from dataclasses import dataclass, field
from typing import Literal

import pytest

from iqvae.config import apply_overrides, build_config, describe, format_options, from_dict, list_presets, opt, to_dict
from iqvae.errors import ConfigError


@dataclass
class Inner:
    lr: float = opt(1e-3, "learning rate")
    mode: Literal["a", "b"] = opt("a", "mode")
    dims: tuple[int, ...] = opt((1, 2), "dims")
    path: str | None = opt(None, "a path")


@dataclass
class Outer:
    name: str = opt("x", "name")
    steps: int = opt(10, "steps")
    inner: Inner = field(default_factory=Inner)

    def validate(self):
        if self.steps < 1:
            raise ConfigError("option 'steps' must be positive")


def test_round_trip_and_types():
    o = from_dict(Outer, {"steps": 5, "inner": {"lr": 1, "dims": [3, 4], "mode": "b"}})
    assert o.steps == 5 and o.inner.lr == 1.0 and isinstance(o.inner.lr, float)
    assert o.inner.dims == (3, 4) and o.inner.mode == "b"
    assert from_dict(Outer, to_dict(o)) == o


@pytest.mark.parametrize(
    "data, fragment",
    [
        ({"stepz": 3}, "unknown option 'stepz'"),
        ({"inner": {"lrr": 3}}, "unknown option 'inner.lrr'"),
        ({"steps": "many"}, "'steps' expects an integer"),
        ({"steps": True}, "'steps' expects an integer"),
        ({"inner": {"mode": "c"}}, "'inner.mode' must be one of"),
        ({"steps": 0}, "'steps' must be positive"),
    ],
)
def test_bad_values_name_the_option(data, fragment):
    with pytest.raises(ConfigError, match=fragment.replace("(", r"\(").replace(")", r"\)")):
        from_dict(Outer, data)


def test_overrides():
    o = apply_overrides(Outer(), ["steps=7", "inner.lr=2e-4", "inner.path=/tmp/x", "inner.dims=[5]"])
    assert (o.steps, o.inner.lr, o.inner.path, o.inner.dims) == (7, 2e-4, "/tmp/x", (5,))
    o = apply_overrides(o, ["inner.path=null"])
    assert o.inner.path is None
    with pytest.raises(ConfigError, match="unknown option 'inner.nope'"):
        apply_overrides(Outer(), ["inner.nope=1"])
    with pytest.raises(ConfigError, match="key=value"):
        apply_overrides(Outer(), ["steps"])


def test_describe_lists_every_leaf_option():
    keys = [row[0] for row in describe(Outer)]
    assert keys == ["name", "steps", "inner.lr", "inner.mode", "inner.dims", "inner.path"]
    text = format_options(Outer)
    assert "inner.lr (float, default 0.001)" in text and "learning rate" in text


def test_config_file_and_preset_errors(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("sec:\n  steps: 3\n  inner: {lr: 0.5}\n")
    o = build_config(Outer, "sec", config_file=f, overrides=["name=y"])
    assert (o.steps, o.inner.lr, o.name) == (3, 0.5, "y")
    with pytest.raises(ConfigError, match="unknown preset 'nope'"):
        build_config(Outer, "sec", preset="nope")
    with pytest.raises(ConfigError, match="does not exist"):
        build_config(Outer, "sec", config_file=tmp_path / "missing.yaml")
    assert isinstance(list_presets(), list)
