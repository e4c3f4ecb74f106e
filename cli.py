"""
Command-line configuration: a dataclass of settings, filled from preset files and --key=value overrides.

    python train.py config/demo_finetune.toml --max_iters=200 --lr=1e-3

Arguments are applied left to right: a preset (a .toml file of key = value lines) sets many keys at once,
an override sets one. Unknown keys and values that do not fit a field's type fail with a message listing
the valid keys. This replaces nanoGPT's exec-based configurator: nothing is executed, everything is typed.
"""

import dataclasses
import sys
import tomllib
import typing


class ConfigError(ValueError):
    pass


def parse(cls, argv=None, start=None):
    """An instance of the dataclass cls: its defaults, then the values in start (a dict, e.g. a resumed
    run's saved settings), then presets and --key=value arguments in order."""
    argv = sys.argv[1:] if argv is None else argv
    values = {k: _cast(cls, k, v, source="saved settings") for k, v in (start or {}).items()}
    for arg in argv:
        if arg in ("-h", "--help"):
            print(describe(cls))
            sys.exit(0)
        if arg.startswith("--"):
            key, sep, text = arg[2:].partition("=")
            if not sep:
                raise ConfigError(f"expected --key=value, got {arg!r}")
            values[key] = _cast(cls, key, text)
        elif arg.endswith(".toml"):
            with open(arg, "rb") as f:
                for key, value in tomllib.load(f).items():
                    values[key] = _cast(cls, key, value, source=arg)
        else:
            raise ConfigError(f"expected a preset file (.toml) or --key=value, got {arg!r}")
    return cls(**values)


def describe(cls):
    """One line per setting: name, type and default."""
    lines = [f"{cls.__name__} settings (--key=value):"]
    for f in dataclasses.fields(cls):
        lines.append(f"  --{f.name}={_default(f)!r}  ({_type_name(_field_types(cls)[f.name])})")
    return "\n".join(lines)


def _field_types(cls):
    return typing.get_type_hints(cls)


def _default(f):
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default


def _type_name(t):
    return getattr(t, "__name__", str(t))


def _cast(cls, key, value, source="command line"):
    """value (text from the command line, or a TOML value) as the type of cls's field key."""
    types = _field_types(cls)
    if key not in types:
        valid = ", ".join(f.name for f in dataclasses.fields(cls))
        raise ConfigError(f"unknown setting {key!r} ({source}); valid settings: {valid}")
    t = types[key]
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
