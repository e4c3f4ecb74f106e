"""cli.parse: presets and --key=value overrides, cast by the field's type, with clear errors."""

import dataclasses
from dataclasses import dataclass, field

import pytest

import cli


@dataclass
class Settings:
    name: str = "a"
    steps: int = 10
    lr: float = 1e-3
    compile: bool = False
    targets: tuple = ("c_attn",)


def test_defaults_presets_and_overrides_apply_in_order(tmp_path):
    preset = tmp_path / "p.toml"
    preset.write_text('# a preset\nsteps = 20\nlr = 0.5\ntargets = ["c_fc", "c_proj"]\nname = "p"\n')
    s = cli.parse(Settings, [str(preset), "--steps=30", "--compile=1", "--targets=a, b"])
    assert s == Settings(name="p", steps=30, lr=0.5, compile=True, targets=("a", "b"))
    assert cli.parse(Settings, []) == Settings()
    assert cli.parse(Settings, ["--lr=2"], start={"steps": 5}) == Settings(steps=5, lr=2.0)


@pytest.mark.parametrize("argv,words", [
    (["--stepz=3"], "unknown setting 'stepz'.*valid settings: name, steps, lr, compile, targets"),
    (["--steps=3.5"], "'steps' .*expects int, got '3.5'"),
    (["--lr=fast"], "'lr' .*expects float"),
    (["--compile=maybe"], "'compile' .*expects bool"),
    (["--steps"], "expected --key=value"),
    (["steps=3"], "expected a preset file"),
])
def test_bad_arguments(argv, words):
    with pytest.raises(cli.ConfigError, match=words):
        cli.parse(Settings, argv)


def test_bad_preset_values(tmp_path):
    preset = tmp_path / "p.toml"
    preset.write_text("steps = 2.5\n")
    with pytest.raises(cli.ConfigError, match=r"'steps' \(.*p.toml\) expects int"):
        cli.parse(Settings, [str(preset)])
    preset.write_text("colour = 'red'\n")
    with pytest.raises(cli.ConfigError, match="unknown setting 'colour'"):
        cli.parse(Settings, [str(preset)])


@dataclass
class Inner:
    r: int = 4
    kind: str = "x"

    def __post_init__(self):
        if self.kind not in ("x", "y"):
            raise ValueError(f"kind must be x or y, got {self.kind!r}")


@dataclass
class Outer:
    steps: int = 10
    inner: Inner = field(default_factory=Inner)


def test_groups_take_dotted_keys_and_tables(tmp_path):
    preset = tmp_path / "p.toml"
    preset.write_text('steps = 2\n[inner]\nr = 8\n')
    assert cli.parse(Outer, [str(preset), "--inner.kind=y"]) == Outer(steps=2, inner=Inner(r=8, kind="y"))
    # saved settings (dataclasses.asdict) come back, and overrides go on top of them
    saved = dataclasses.asdict(Outer(inner=Inner(r=3)))
    assert cli.parse(Outer, ["--inner.kind=y"], start=saved) == Outer(inner=Inner(r=3, kind="y"))
    assert "--inner.r=4  (int)" in cli.describe(Outer)


@pytest.mark.parametrize("argv,words", [
    (["--inner=3"], "'inner' .*is a group of settings; set one of inner.r, inner.kind"),
    (["--inner.rank=3"], "unknown setting 'inner.rank'.*valid settings: inner.r, inner.kind"),
    (["--inner.r=three"], "'inner.r' .*expects int"),
    (["--steps.x=1"], "'steps' .*has no sub-settings"),
    (["--inner.kind=z"], "kind must be x or y, got 'z'"),
])
def test_bad_group_arguments(argv, words):
    with pytest.raises(cli.ConfigError, match=words):
        cli.parse(Outer, argv)


def test_missing_or_broken_preset_is_named(tmp_path):
    with pytest.raises(cli.ConfigError, match="preset .*nope.toml does not exist"):
        cli.parse(Outer, [str(tmp_path / "nope.toml")])
    broken = tmp_path / "broken.toml"
    broken.write_text("steps = = 3\n")
    with pytest.raises(cli.ConfigError, match="preset .*broken.toml is not valid TOML"):
        cli.parse(Outer, [str(broken)])
