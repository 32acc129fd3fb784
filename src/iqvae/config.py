"""One config system: dataclasses, YAML presets, ``--set key=value`` overrides.

* Every configurable object is a (possibly nested) dataclass whose fields carry ``help`` metadata (see :func:`opt`).
* :func:`from_dict` builds one from plain data; an unknown key is a :class:`~iqvae.errors.ConfigError` that names the
  key and lists the valid ones; a value of the wrong type or outside its choices is an error too.
* :func:`apply_overrides` applies ``a.b=value`` strings (values parsed as YAML scalars: ``1e-4``, ``true``, ``[1, 2]``).
* :func:`describe` lists every option with its default and help, for ``--help``; :func:`format_options` prints the
  paper's options first, then the options tagged ``opt(..., ours=True)`` (our additions, not in the paper) as a group;
  :func:`additions` names the additions a built config turns on (``iqvae presets``).
* Presets are YAML files in ``iqvae/presets``; a preset holds one mapping per section (``tokenizer``, ``transformer``).
  A preset (or a ``--config`` file) may start with ``extends: NAME``: it is then that preset deep-merged with its own
  mappings (chains allowed; a cycle or an unknown name is an error naming the file).
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from pathlib import Path
from typing import Any, Literal, TypeVar, Union, get_args, get_origin, get_type_hints

import yaml

from .errors import ConfigError

T = TypeVar("T")
PRESET_DIR = Path(__file__).parent / "presets"
_NUMBER = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$")


def opt(default: Any = dataclasses.MISSING, help: str = "", *, factory: Any = dataclasses.MISSING,
        ours: bool = False) -> Any:
    """A dataclass field with help text (shown by ``--help`` and ``iqvae presets``).

    ``ours=True`` tags an addition of this implementation that is not in the paper: its default is the paper's model
    (off), ``--help`` lists it in a separate group and ``iqvae presets`` shows which presets turn it on.  The rule for
    what counts as ours is in docs/design.md ("Options: the paper's and ours").
    """
    metadata = {"help": help, "ours": bool(ours)}
    if factory is not dataclasses.MISSING:
        return dataclasses.field(default_factory=factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def field_default(f: dataclasses.Field) -> Any:
    """The default value of a dataclass field (``dataclasses.MISSING`` for a required one)."""
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        return f.default_factory()  # type: ignore[misc]
    return dataclasses.MISSING


def check_bounds(obj: Any, names: typing.Iterable[str], *, low: float = 0, strict: bool = False,
                 integer: bool = False, where: str = "") -> None:
    """Each option ``names`` of config ``obj`` must be a number (an integer with ``integer``) ``>= low`` (``> low``
    with ``strict``); otherwise a ConfigError naming the option (``where`` + name) and the bound."""
    for name in names:
        v = getattr(obj, name)
        number = not isinstance(v, bool) and isinstance(v, int if integer else (int, float))
        if not (number and (v > low if strict else v >= low)):
            kind = "an integer" if integer else "a number"
            raise ConfigError(f"option '{where}{name}' must be {kind} {'>' if strict else '>='} {low:g}, got {v!r}")


def _type_name(tp: Any) -> str:
    origin = get_origin(tp)
    if origin is Literal:
        return "|".join(str(a) for a in get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in get_args(tp))
    if origin in (tuple, list):
        args = [a for a in get_args(tp) if a is not Ellipsis]
        return f"list of {_type_name(args[0])}" if args else "list"
    if tp is type(None):
        return "null"
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Check ``value`` against annotation ``tp``; return it converted (int -> float, list -> tuple)."""
    origin = get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"option '{where}' expects a mapping of {tp.__name__} options, got {value!r}")
        return from_dict(tp, value, where + ".")
    if origin is Literal:
        if value not in get_args(tp):
            raise ConfigError(f"option '{where}' must be one of {list(get_args(tp))}, got {value!r}")
        return value
    if origin in (Union, types.UnionType):
        errors = []
        args = get_args(tp)
        if value is None and type(None) in args:
            return None
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, where)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(f"option '{where}' expects {_type_name(tp)}, got {value!r}")
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"option '{where}' expects {_type_name(tp)}, got {value!r}")
        args = [a for a in get_args(tp) if a is not Ellipsis]
        item_tp = args[0] if args else Any
        items = [_coerce(v, item_tp, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if tp is Any:
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"option '{where}' expects true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"option '{where}' expects an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, str) and _NUMBER.match(value.strip()):
            value = float(value)  # YAML 1.1 reads "2e-4" (no dot) as a string
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"option '{where}' expects a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"option '{where}' expects a string, got {value!r}")
        return value
    if tp is dict or origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"option '{where}' expects a mapping, got {value!r}")
        return dict(value)
    return value


def _hints(cls: type) -> dict[str, Any]:
    return get_type_hints(cls)


def from_dict(cls: type[T], data: dict[str, Any] | None, where: str = "") -> T:
    """Build dataclass ``cls`` from ``data``; unknown keys and wrongly typed values are errors."""
    data = dict(data or {})
    hints = _hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = [k for k in data if k not in names]
    if unknown:
        raise ConfigError(
            f"unknown option '{where}{unknown[0]}'; valid options here: {', '.join(where + n for n in names)}"
        )
    kwargs = {k: _coerce(v, hints[k], where + k) for k, v in data.items()}
    try:
        obj = cls(**kwargs)
    except TypeError as e:  # a required field without a default
        raise ConfigError(f"incomplete options for '{where or cls.__name__}': {e}") from None
    validate = getattr(obj, "validate", None)
    if callable(validate):
        validate()
    return obj


def to_dict(obj: Any) -> Any:
    """Plain data (dicts, lists, scalars) for JSON / YAML."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj


def _set_path(data: dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    cur = data
    for p in parts[:-1]:
        nxt = cur.get(p)
        if not isinstance(nxt, dict):
            nxt = {}
            cur[p] = nxt
        cur = nxt
    cur[parts[-1]] = value


def apply_overrides(obj: T, overrides: typing.Iterable[str]) -> T:
    """Return a copy of ``obj`` with ``key.sub=value`` overrides applied (values parsed as YAML)."""
    data = to_dict(obj)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set expects key=value, got {item!r}")
        key, raw = item.split("=", 1)
        key = key.strip()
        try:
            value = yaml.safe_load(raw) if raw.strip() != "" else ""
        except yaml.YAMLError as e:
            raise ConfigError(f"--set {key}: cannot parse value {raw!r}: {e}") from None
        _check_path(type(obj), key)
        _set_path(data, key, value)
    return from_dict(type(obj), data)


def split_overrides(items: typing.Iterable[str], sections: typing.Sequence[str]) -> dict[str, list[str]]:
    """``--set SECTION.KEY=VALUE`` items of a command that configures several sections (a bench: tokenizer,
    transformer, its own section), grouped by section with the section name stripped; anything else is an error."""
    out: dict[str, list[str]] = {name: [] for name in sections}
    for item in items:
        head, _, rest = item.partition(".")
        if head not in out or not rest or "=" not in rest:
            expected = ", ".join(f"{name}.KEY=VALUE" for name in sections)
            raise ConfigError(f"--set expects one of {expected}; got {item!r}")
        out[head].append(rest)
    return out


def _check_path(cls: type, key: str) -> None:
    cur: Any = cls
    done = []
    for part in key.split("."):
        if not dataclasses.is_dataclass(cur):
            raise ConfigError(f"unknown option '{key}': '{'.'.join(done)}' has no sub-options")
        hints = _hints(cur)
        if part not in hints:
            prefix = ".".join(done) + "." if done else ""
            valid = ", ".join(prefix + f.name for f in dataclasses.fields(cur))
            raise ConfigError(f"unknown option '{key}'; valid options here: {valid}")
        done.append(part)
        cur = hints[part]


def _leaves(cls: type, prefix: str = "") -> typing.Iterator[tuple[str, dataclasses.Field, Any]]:
    """Every leaf option of dataclass ``cls`` as (dotted key, field, annotation), in declaration order."""
    hints = _hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            yield from _leaves(tp, prefix + f.name + ".")
        else:
            yield prefix + f.name, f, tp


def describe(cls: type, prefix: str = "") -> list[tuple[str, str, Any, str]]:
    """Every leaf option as (key, type, default, help)."""
    rows = []
    for key, f, tp in _leaves(cls, prefix):
        default = field_default(f)
        rows.append((key, _type_name(tp), "(required)" if default is dataclasses.MISSING else to_dict(default),
                     f.metadata.get("help", "")))
    return rows


def ours_options(cls: type, prefix: str = "") -> list[str]:
    """The keys of the options tagged ``ours`` (our additions, not in the paper), in declaration order."""
    return [key for key, f, _ in _leaves(cls, prefix) if f.metadata.get("ours")]


def additions(obj: Any) -> list[str]:
    """Our additions that config ``obj`` turns on: each ``ours`` option whose value differs from its default, as
    ``key`` (a boolean set to true) or ``key=value``."""
    out = []
    for key, f, _ in _leaves(type(obj)):
        if not f.metadata.get("ours"):
            continue
        value = obj
        for part in key.split("."):
            value = getattr(value, part)
        if to_dict(value) != to_dict(field_default(f)):
            out.append(key if value is True else f"{key}={to_dict(value)}")
    return out


def format_options(cls: type, prefix: str = "") -> str:
    """Text block listing every option, for argparse epilogs: the paper's options, then our additions as a group."""
    ours = set(ours_options(cls, prefix))
    paper, added = [], []
    for key, tp, default, help_ in describe(cls, prefix):
        lines = added if key in ours else paper
        lines.append(f"  {key} ({tp}, default {default!r})")
        if help_:
            lines.append(f"      {help_}")
    if added:
        paper += ["", "our additions (not in the paper; their defaults are the paper's model, which the `paper` preset "
                      "keeps; docs/design.md):"] + added
    return "\n".join(paper)


def list_presets() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


def load_yaml(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file '{p}' does not exist")
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"config file '{p}' is not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file '{p}' must hold a mapping at its top level")
    return data


def load_preset(name: str) -> dict[str, Any]:
    """The preset's mappings, with ``extends`` resolved."""
    return _load_preset(name, ())


def _load_preset(name: str, chain: tuple[str, ...], referrer: Path | None = None) -> dict[str, Any]:
    path = PRESET_DIR / f"{name}.yaml"
    if not path.is_file():
        where = f"preset file '{referrer}' extends " if referrer else ""
        raise ConfigError(f"{where}unknown preset '{name}'; available: {', '.join(list_presets())}")
    return _resolve_extends(load_yaml(path), path, chain + (name,))


def _resolve_extends(data: dict[str, Any], path: Path, chain: tuple[str, ...]) -> dict[str, Any]:
    """``data`` with its ``extends: NAME`` replaced by that preset (resolved the same way), deep-merged under it."""
    if "extends" not in data:
        return data
    data = dict(data)
    base = data.pop("extends")
    if not isinstance(base, str):
        raise ConfigError(f"config file '{path}': 'extends' must name one preset, got {base!r}")
    if base in chain:
        raise ConfigError(f"config file '{path}': 'extends: {base}' makes a cycle "
                          f"({' -> '.join(chain + (base,))})")
    return _deep_merge(_load_preset(base, chain, path), data)


def _file_section(path: Path, section: str) -> dict[str, Any]:
    """A config file's ``section`` (or the whole file when it has no such key); a file with ``extends`` must hold
    sections, the ones of the preset it extends."""
    raw = load_yaml(path)
    if "extends" not in raw:
        return (raw[section] or {}) if section in raw else raw
    merged = _resolve_extends(raw, path, ())
    base = load_preset(raw["extends"])
    stray = [k for k in raw if k != "extends" and k not in base and k != section]
    if stray:
        raise ConfigError(f"config file '{path}' extends '{raw['extends']}', so its top level must hold sections "
                          f"({', '.join(base)}); got '{stray[0]}'")
    if section not in merged:
        raise ConfigError(f"config file '{path}' (extends '{raw['extends']}') has no '{section}' section")
    return merged[section] or {}


def build_config(
    cls: type[T],
    section: str,
    *,
    preset: str | None = None,
    config_file: str | Path | None = None,
    overrides: typing.Iterable[str] = (),
) -> T:
    """Defaults <- preset's ``section`` <- config file's ``section`` (or whole file) <- ``--set`` overrides."""
    data: dict[str, Any] = {}
    if preset is not None:
        pdata = load_preset(preset)
        if section not in pdata:
            raise ConfigError(f"preset '{preset}' has no '{section}' section")
        data = dict(pdata[section] or {})
    if config_file is not None:
        data = _deep_merge(data, _file_section(Path(config_file), section))
    obj = from_dict(cls, data, "")
    return apply_overrides(obj, list(overrides))


def _deep_merge(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    out = dict(a)
    for k, v in b.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _deep_merge(out[k], v)
        else:
            out[k] = v
    return out
