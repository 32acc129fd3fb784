import re
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


# ---------------------------------------------------------------------------------------------- extends
def _presets(tmp_path, monkeypatch, files: dict[str, str]):
    import iqvae.config as config

    for name, text in files.items():
        (tmp_path / f"{name}.yaml").write_text(text)
    monkeypatch.setattr(config, "PRESET_DIR", tmp_path)


def test_preset_extends_deep_merges_along_a_chain(tmp_path, monkeypatch):
    from iqvae.config import load_preset

    _presets(tmp_path, monkeypatch, {
        "base": "sec:\n  name: b\n  steps: 3\n  inner: {lr: 0.5, dims: [1, 2, 3]}\nother: {x: 1}\n",
        "mid": "extends: base\nsec:\n  inner: {mode: b}\n",
        "top": "extends: mid\nsec:\n  steps: 9\n  inner: {dims: [7]}\n",
    })
    assert load_preset("top") == {"sec": {"name": "b", "steps": 9, "inner": {"lr": 0.5, "dims": [7], "mode": "b"}},
                                  "other": {"x": 1}}
    o = build_config(Outer, "sec", preset="top", overrides=["inner.lr=0.25"])
    assert (o.name, o.steps, o.inner.lr, o.inner.dims, o.inner.mode) == ("b", 9, 0.25, (7,), "b")
    # a --config file may extend a preset too; it then holds sections
    f = tmp_path / "mine.yml"
    f.write_text("extends: mid\nsec: {steps: 4}\n")
    o = build_config(Outer, "sec", config_file=f)
    assert (o.name, o.steps, o.inner.lr, o.inner.mode) == ("b", 4, 0.5, "b")
    f.write_text("extends: mid\nsteps: 4\n")
    with pytest.raises(ConfigError, match=r"mine.yml' extends 'mid', so its top level must hold sections"):
        build_config(Outer, "sec", config_file=f)


@pytest.mark.parametrize("files, fragment", [
    ({"a": "extends: b\nsec: {}\n", "b": "extends: a\n"}, r"b.yaml': 'extends: a' makes a cycle \(a -> b -> a\)"),
    ({"a": "extends: a\n"}, r"a.yaml': 'extends: a' makes a cycle \(a -> a\)"),
    ({"a": "extends: nope\n"}, r"preset file '.*a.yaml' extends unknown preset 'nope'; available: a"),
    ({"a": "extends: [b]\n"}, r"a.yaml': 'extends' must name one preset"),
])
def test_preset_extends_errors_name_the_file(tmp_path, monkeypatch, files, fragment):
    _presets(tmp_path, monkeypatch, files)
    with pytest.raises(ConfigError, match=fragment):
        build_config(Outer, "sec", preset="a")


def test_builtin_presets_extend_and_resolve():
    """demo extends small and demo-quick extends demo; every preset builds both stages."""
    from iqvae.config import load_yaml, PRESET_DIR
    from iqvae.train.tokenizer import TokenizerRunConfig
    from iqvae.train.transformer import TransformerRunConfig

    assert load_yaml(PRESET_DIR / "demo.yaml")["extends"] == "small"
    assert load_yaml(PRESET_DIR / "demo-quick.yaml")["extends"] == "demo"
    for name in list_presets():
        build_config(TokenizerRunConfig, "tokenizer", preset=name)
        build_config(TransformerRunConfig, "transformer", preset=name)
    demo = build_config(TransformerRunConfig, "transformer", preset="demo")
    small = build_config(TransformerRunConfig, "transformer", preset="small")
    assert (demo.model.n_layer, demo.model.n_embd, demo.model.above_window, demo.train.lr) == (2, 128, 3, 5e-3)
    assert (small.model.n_layer, small.train.steps, demo.train.steps) == (4, 900, 800)


# ---------------------------------------------------------------------------------------------- paper / ours
@dataclass
class WithOurs:
    a: int = opt(1, "paper option")
    extra: bool = opt(False, "an addition", ours=True)
    inner: Inner = field(default_factory=Inner)
    width: int = opt(1, "another addition", ours=True)


def test_ours_options_form_their_own_group():
    from iqvae.config import additions, ours_options

    assert ours_options(WithOurs) == ["extra", "width"]
    text = format_options(WithOurs)
    head, tail = text.split("our additions (not in the paper")
    assert "  a (int" in head and "inner.lr" in head and "extra" not in head and "width" not in head
    assert "  extra (bool, default False)" in tail and "  width (int, default 1)" in tail
    assert format_options(Outer).count("our additions") == 0
    assert additions(WithOurs()) == []
    assert additions(WithOurs(extra=True, width=3, a=5)) == ["extra", "width=3"]


def _stage_additions(preset):
    from iqvae.config import additions
    from iqvae.train.tokenizer import TokenizerRunConfig
    from iqvae.train.transformer import TransformerRunConfig

    return (additions(build_config(TokenizerRunConfig, "tokenizer", preset=preset)),
            additions(build_config(TransformerRunConfig, "transformer", preset=preset)))


def test_paper_preset_uses_none_of_our_additions_and_small_lists_its_own():
    from iqvae.config import ours_options
    from iqvae.train.tokenizer import TokenizerRunConfig
    from iqvae.train.transformer import TransformerRunConfig

    assert {"model.colour_head", "model.colour_head_cond", "model.cond_cell_head", "loss.colour_weight",
            "loss.cond_cell_weight"} <= set(ours_options(TokenizerRunConfig))
    assert {"model.pos_init", "model.cond_align", "model.above_input", "model.above_window"} <= set(
        ours_options(TransformerRunConfig))
    assert _stage_additions("paper") == ([], [])
    assert _stage_additions("small") == (
        ["model.colour_head", "model.colour_head_cond", "model.cond_cell_head=spatial"],
        ["model.pos_init=spatial", "model.cond_align", "model.above_input", "model.above_window=3"])
    small_tok, small_gpt = _stage_additions("small")
    assert _stage_additions("demo") == (small_tok, [*small_gpt, "model.cfg_dropout=0.1"])  # + guidance
    assert _stage_additions("demo-quick") == ([], ["model.cfg_dropout=0.1"])
    for cond in ("seg", "audio"):
        assert _stage_additions(f"quality-{cond}") == _stage_additions("demo")
    demo_tok, demo_gpt = _stage_additions("demo")
    # text: the transformer reads the caption's words (no 16 x 16 condition map, so no aligned condition token)
    assert _stage_additions("quality-text") == ([*demo_tok, "model.transformer_cond=input"],
                                                [a for a in demo_gpt if a != "model.cond_align"])
    bins = "model.cond_cell_target=colour_bins"  # the condition codes that name the class an outline implies
    for preset in ("quality-edge", "quality-keypoints", "quality-layout", "demo-edge", "demo-keypoints"):
        assert _stage_additions(preset) == ([*demo_tok, bins], demo_gpt)
    assert _stage_additions("demo-text") == _stage_additions("quality-text")


def test_split_overrides_groups_by_section_and_names_bad_items():
    from iqvae.config import split_overrides

    got = split_overrides(["tokenizer.train.steps=5", "quality.cfg_scale=2", "tokenizer.model.ch=8"],
                          ("tokenizer", "transformer", "quality"))
    assert got == {"tokenizer": ["train.steps=5", "model.ch=8"], "transformer": [], "quality": ["cfg_scale=2"]}
    for bad in ("ablation.conditions=3", "tokenizer.train.steps", "tokenizer=3"):
        with pytest.raises(ConfigError, match=re.escape(repr(bad))):
            split_overrides([bad], ("tokenizer", "transformer", "quality"))
