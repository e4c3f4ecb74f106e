"""
Command-line configuration: a dataclass of settings, filled from preset files and --key=value overrides.

    python train.py config/demo_finetune.toml --max_iters=200 --adapter.r=4

Arguments are applied left to right: a preset (a .toml file of key = value lines) sets many keys at once,
an override sets one. A field whose type is itself a dataclass is a group of settings: its keys are written
with a dot on the command line (--adapter.r=4) and as a [table] in a preset ([adapter] then r = 4). Unknown
keys and values that do not fit a field's type fail with a message listing the valid keys. This replaces
nanoGPT's exec-based configurator: nothing is executed, everything is typed.
"""

import dataclasses
import sys
import tomllib
import typing


class ConfigError(ValueError):
    pass


def parse(cls, argv=None, start=None):
    """An instance of the dataclass cls: its defaults, then the values in start (a dict such as
    dataclasses.asdict gives, e.g. a resumed run's saved settings), then presets and --key=value arguments
    in order."""
    argv = sys.argv[1:] if argv is None else argv
    values = {}  # nested like the dataclasses: {"max_iters": 200, "adapter": {"r": 4}}
    for key, value in _flatten(start or {}):
        _set(cls, values, key, value, "saved settings")
    for arg in argv:
        if arg in ("-h", "--help"):
            print(describe(cls))
            sys.exit(0)
        if arg.startswith("--"):
            key, sep, text = arg[2:].partition("=")
            if not sep:
                raise ConfigError(f"expected --key=value, got {arg!r}")
            _set(cls, values, key, text, "command line")
        elif arg.endswith(".toml"):
            for key, value in _flatten(_read_toml(arg)):
                _set(cls, values, key, value, arg)
        else:
            raise ConfigError(f"expected a preset file (.toml) or --key=value, got {arg!r}")
    return _build(cls, values)


def describe(cls, prefix=""):
    """One line per setting: name, type and default (a group's settings under their dotted names)."""
    lines = [f"{cls.__name__} settings (--key=value):"] if not prefix else []
    for f in dataclasses.fields(cls):
        t = _field_types(cls)[f.name]
        if dataclasses.is_dataclass(t):
            lines += describe(t, prefix + f.name + ".")
        else:
            lines.append(f"  --{prefix}{f.name}={_default(f)!r}  ({_type_name(t)})")
    return "\n".join(lines) if not prefix else lines


def _read_toml(path):
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"preset {path} does not exist") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"preset {path} is not valid TOML: {e}") from None


def _flatten(values, prefix=""):
    """(dotted key, value) pairs of a nested dict: {"adapter": {"r": 4}} -> ("adapter.r", 4)."""
    for key, value in values.items():
        if isinstance(value, dict):
            yield from _flatten(value, f"{prefix}{key}.")
        else:
            yield prefix + key, value


def _set(cls, values, key, value, source, group=""):
    """values[key] = value cast to its field's type, following a dotted key into its group."""
    name, dot, rest = key.partition(".")
    full = group + key  # as the user wrote it, for messages
    types = _field_types(cls)
    if name not in types:
        valid = ", ".join(group + f.name for f in dataclasses.fields(cls))
        raise ConfigError(f"unknown setting {full!r} ({source}); valid settings: {valid}")
    if dataclasses.is_dataclass(types[name]):
        if not dot:
            keys = ", ".join(f"{group}{name}.{f.name}" for f in dataclasses.fields(types[name]))
            raise ConfigError(f"setting {full!r} ({source}) is a group of settings; set one of {keys}")
        return _set(types[name], values.setdefault(name, {}), rest, value, source, f"{group}{name}.")
    if dot:
        raise ConfigError(f"setting {group + name!r} ({source}) has no sub-settings, got {full!r}")
    values[name] = _cast(types[name], full, value, source)


def _build(cls, values):
    """cls(**values), each group built from its own dict (missing keys keep their defaults)."""
    types = _field_types(cls)
    kwargs = {k: _build(types[k], v) if dataclasses.is_dataclass(types[k]) else v for k, v in values.items()}
    try:
        return cls(**kwargs)
    except ValueError as e:  # a dataclass's own check of its values (__post_init__)
        raise ConfigError(str(e)) from None


def _field_types(cls):
    return typing.get_type_hints(cls)


def _default(f):
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default


def _type_name(t):
    return getattr(t, "__name__", str(t))


def _cast(t, key, value, source):
    """value (text from the command line, or a TOML value) as the type t of the field key."""
    try:
        if t is bool:
            return _to_bool(value)
        if t is tuple:
            items = value.split(",") if isinstance(value, str) else list(value)
            return tuple(str(i).strip() for i in items if str(i).strip())
        if t in (int, float, str):
            if t is int and isinstance(value, float) or t is not str and isinstance(value, bool):
                raise ValueError
            if t is str and not isinstance(value, str):
                raise ValueError
            return t(value)
    except ValueError:
        raise ConfigError(f"setting {key!r} ({source}) expects {_type_name(t)}, got {value!r}") from None
    raise ConfigError(f"setting {key!r} has a type ({t}) the parser does not know")


def _to_bool(value):
    if isinstance(value, bool):
        return value
    if str(value).lower() in ("1", "true", "yes", "on"):
        return True
    if str(value).lower() in ("0", "false", "no", "off"):
        return False
    raise ValueError
