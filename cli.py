"""
Command-line configuration: a dataclass of settings, filled from preset files and --key=value overrides.

    python train.py config/demo_finetune.toml --max_iters=200 --adapter.r=4

Arguments are applied left to right: a preset (a .toml file of key = value lines) sets many keys at once,
an override sets one. A field whose type is itself a dataclass is a group of settings: its keys are written
with a dot on the command line (--adapter.r=4) and as a [table] in a preset ([adapter] then r = 4). Unknown
keys and values that do not fit a field's type fail with a message listing the valid keys. This replaces
nanoGPT's exec-based configurator: nothing is executed, everything is typed.

Values are checked too: a settings dataclass calls check() from its __post_init__ with a small table of what
each field allows (at_least(1), one_of("a", "b"), ...), and a script runs its main through run(), which prints
an expected error (a bad setting or file, a failed check) as one line "error: ..." and exits with code 1.
"""

import dataclasses
import math
import re
import sys
import tomllib
import typing


class ConfigError(ValueError):
    pass


def parse(cls, argv=None, start=None):
    """An instance of the dataclass cls: its defaults, then the values in start (a dict such as
    dataclasses.asdict gives, e.g. a resumed run's saved settings), then presets and --key=value arguments
    in order."""
    return _build(cls, _values(cls, sys.argv[1:] if argv is None else argv, start))


def given(cls, argv):
    """The dotted keys that presets and --key=value arguments in argv set, e.g. {"max_iters", "adapter.r"}:
    what the user asked for, as opposed to defaults and saved settings."""
    return {key for key, _ in _flatten(_values(cls, argv, None))}


def _values(cls, argv, start):
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
    return values


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
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"preset {path} is not valid TOML: {e}") from None
    except OSError as e:  # a directory, no permission, ...
        raise ConfigError(f"preset {path} cannot be read: {e.strerror}") from None


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


# ----------------------------------------------------------------------------------------------------
# What a setting's value may be: check(settings, rules) with rules {field: one of these}

def one_of(*allowed):
    return (lambda v: v in allowed), "one of " + ", ".join(map(repr, allowed))


def at_least(low):
    return (lambda v: v >= low), f">= {low}"


def above(low):
    return (lambda v: v > low), f"> {low}"


def between(low, high):
    return (lambda v: low <= v <= high), f"in [{low}, {high}]"


def fraction():
    """A probability that is not 1 (dropout, jitter, Adam's betas)."""
    return (lambda v: 0 <= v < 1), "in [0, 1)"


def matching(pattern, words):
    return (lambda v: re.fullmatch(pattern, v) is not None), words


def check(settings, rules, prefix="", combinations=()):
    """Raise one ConfigError naming every field of the dataclass instance settings whose value is not of its
    type or breaks its rule (rules: {field: (test, allowed values in words)}); then, when all fit, every
    combination that does not hold (combinations: (test of settings, message)). prefix: how a user writes the
    group's keys ("adapter.")."""
    bad = []
    for name, t in _field_types(type(settings)).items():
        value = getattr(settings, name)
        if dataclasses.is_dataclass(t):
            continue
        if not _fits(value, t):
            bad.append(f"{prefix}{name}={value!r} (expected {'a finite ' if t is float else ''}{_type_name(t)})")
        elif name in rules and not rules[name][0](value):
            bad.append(f"{prefix}{name}={value!r} (expected {rules[name][1]})")
    if not bad:
        bad = [message for test, message in combinations if not test(settings)]
    if bad:
        raise ConfigError("; ".join(bad))


def _fits(value, t):
    """Whether value is of the field type t: an int is a float, a bool is neither an int nor a float, and no
    setting is infinite or NaN."""
    if t in (int, float) and isinstance(value, bool):
        return False
    if t is float:
        return isinstance(value, (int, float)) and math.isfinite(value)
    return isinstance(value, t)


# ----------------------------------------------------------------------------------------------------
# Running a script

# Errors a user can act on: a bad setting (ConfigError is a ValueError), a missing or unreadable file (OSError),
# a failed check of data or a checkpoint (ValueError), a loss that blew up (FloatingPointError). Anything else
# is a bug, and keeps its traceback.
EXPECTED_ERRORS = (ValueError, OSError, FloatingPointError)


def run(main, argv=None):
    """main(argv), as a script's entry point: an expected error is one line "error: ..." on stderr and exit
    code 1; Ctrl-C is one line and exit code 130."""
    try:
        return main(argv)
    except KeyboardInterrupt as e:
        print(f"\n{e or 'interrupted'}", file=sys.stderr)
        sys.exit(130)
    except EXPECTED_ERRORS as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
