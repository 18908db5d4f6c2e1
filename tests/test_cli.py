"""The CLI shell: every command is listed and loads; ``--help`` imports no command module."""

from __future__ import annotations

import importlib

import pytest

from cass_deploy.cli import COMMANDS, build_parser, main
from cass_deploy.commands.common import options_from
from cass_deploy.config import FieldConfig
from cass_deploy.demo import DemoOptions

from conftest import run_python


@pytest.mark.parametrize("name", list(COMMANDS))
def test_every_command_module_has_the_contract(name):
    module = importlib.import_module(f"cass_deploy.commands.{name}")
    assert callable(module.add_arguments) and callable(module.run)


@pytest.mark.parametrize("name", list(COMMANDS))
def test_every_command_help_exits_zero(name, capsys):
    with pytest.raises(SystemExit) as exc:
        main([name, "--help"])
    assert exc.value.code == 0
    assert COMMANDS[name].split()[0] in capsys.readouterr().out


def test_top_level_help_lists_every_command_and_loads_none():
    code = (
        "import sys; from cass_deploy.cli import main\n"
        "try:\n    main(['--help'])\nexcept SystemExit as e:\n    assert e.code == 0\n"
        "loaded = sorted(m for m in sys.modules if m.startswith('cass_deploy.commands.') or m == 'torch')\n"
        "assert not loaded, loaded\n"
    )
    out = run_python(code)
    for name in COMMANDS:
        assert name in out.stdout


def test_unknown_command_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["no-such-command"])
    assert exc.value.code == 2
    assert "invalid choice" in capsys.readouterr().err


def test_parser_for_one_command_leaves_the_others_bare():
    parser = build_parser("env")
    assert parser.parse_args(["env", "--json"]).json is True


def _parse(name: str, *argv: str):
    return build_parser(name).parse_args([name, *argv])


@pytest.mark.parametrize("name", ["demo", "train", "diagnose", "ablate"])
def test_set_overrides_accumulate_in_every_command(name):
    assert _parse(name).overrides == []
    assert _parse(name, "--set", "a=1", "--set", "b.c=2").overrides == ["a=1", "b.c=2"]


@pytest.mark.parametrize(("name", "positional"), [("diagnose", []), ("validate", ["model.pt"])])
def test_fields_default_to_the_field_config(name, positional):
    far, near = FieldConfig().far_max, FieldConfig().near_min
    assert tuple(_parse(name, *positional).fields) == (far, near)
    assert _parse(name, *positional, "--fields", "0.4", "0.8").fields == [0.4, 0.8]


def test_demo_options_come_from_the_parsed_arguments():
    args = _parse("demo", "--out", "runs/x", "--force", "--verify-images", "3", "--no-progress")
    opts = options_from(DemoOptions, args, progress=not args.no_progress)
    assert (opts.out, opts.force, opts.verify_images, opts.progress) == ("runs/x", True, 3, False)
    assert opts.calib_images == DemoOptions().calib_images  # no flag: the option's default
