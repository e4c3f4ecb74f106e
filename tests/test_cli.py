"""cli.parse: presets and --key=value overrides, cast by the field's type, with clear errors."""

from dataclasses import dataclass

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
