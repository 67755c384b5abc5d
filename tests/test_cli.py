"""The `tirgrpo` command line: help for every command, errors as exit code 2 with a message."""

import subprocess
import sys
import types

import pytest

import tirgrpo.cli as cli
from tirgrpo.cli import COMMANDS, main
from tirgrpo.errors import TirgrpoError


def run_main(argv):
    """main(argv) -> exit code, whether it returns or raises SystemExit (argparse)."""
    try:
        return main(argv)
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 1)


def test_top_level_help_lists_every_command(capsys):
    assert run_main(["--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: tirgrpo")
    for name, (_, summary) in COMMANDS.items():
        assert name in out and summary[:30] in out


def test_no_command_prints_help(capsys):
    assert run_main([]) == 0
    assert "usage: tirgrpo" in capsys.readouterr().out


def test_version(capsys):
    from tirgrpo import __version__

    assert run_main(["--version"]) == 0
    assert __version__ in capsys.readouterr().out


@pytest.mark.parametrize("command", list(COMMANDS))
def test_each_command_help(command, capsys):
    assert run_main([command, "--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: tirgrpo {command}")
    assert "--help" in out
    # the command's own arguments are listed (add_arguments ran), not just the bare subparser's -h
    assert out.splitlines()[0].strip() != f"usage: tirgrpo {command} [-h]", out


def test_nested_data_command_help(capsys):
    assert run_main(["data", "gsm8k-verify", "--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: tirgrpo data gsm8k-verify") and "--out" in out


def test_train_help_documents_its_options(capsys):
    assert run_main(["train", "--help"]) == 0
    out = capsys.readouterr().out
    for opt in ("--config", "--set", "--resume", "--overwrite"):
        assert opt in out


def test_unknown_command_or_option_is_a_usage_error(capsys):
    assert run_main(["frobnicate"]) == 2
    assert "invalid choice" in capsys.readouterr().err
    assert run_main(["train", "--no-such-option"]) == 2
    assert "unrecognized arguments" in capsys.readouterr().err


def test_tirgrpo_error_becomes_exit_2_with_message(capsys, tmp_path):
    missing = tmp_path / "nope.toml"
    assert run_main(["train", "--config", str(missing)]) == 2
    captured = capsys.readouterr()
    assert f"tirgrpo train: error: config file not found: {missing}" in captured.err
    assert "Traceback" not in captured.err and captured.out == ""


def test_bad_set_value_is_exit_2_naming_the_key(capsys):
    assert run_main(["train", "--set", "optim.total_steps=many"]) == 2
    err = capsys.readouterr().err
    assert "optim.total_steps" in err and "int" in err


def test_error_from_any_command_module(monkeypatch, capsys):
    """The router turns a TirgrpoError raised by a command's run() into exit 2, and
    KeyboardInterrupt into 130; other exceptions are not swallowed."""
    fake = types.ModuleType("tirgrpo_fake_cmd")
    fake.add_arguments = lambda p: p.add_argument("--what", default="error")

    def run(args):
        if args.what == "error":
            raise TirgrpoError("data.jsonl line 3: missing field 'prompt'")
        if args.what == "interrupt":
            raise KeyboardInterrupt
        if args.what == "bug":
            raise RuntimeError("a real bug")
        return 0

    fake.run = run
    monkeypatch.setitem(sys.modules, "tirgrpo_fake_cmd", fake)
    monkeypatch.setitem(cli.COMMANDS, "fake", ("tirgrpo_fake_cmd", "a test command"))
    assert main(["fake"]) == 2
    assert capsys.readouterr().err == "tirgrpo fake: error: data.jsonl line 3: missing field 'prompt'\n"
    assert main(["fake", "--what", "interrupt"]) == 130
    assert "interrupted" in capsys.readouterr().err
    assert main(["fake", "--what", "ok"]) == 0


def _fake_command(monkeypatch, exc):
    fake = types.ModuleType("tirgrpo_fake_cmd")
    fake.add_arguments = lambda p: None

    def run(args):
        raise exc

    fake.run = run
    monkeypatch.setitem(sys.modules, "tirgrpo_fake_cmd", fake)
    monkeypatch.setitem(cli.COMMANDS, "fake", ("tirgrpo_fake_cmd", "a test command"))


def test_unexpected_error_is_one_line_and_a_log_file(monkeypatch, capsys, tmp_path):
    """A bug prints one line and where the full traceback went; --debug re-raises it."""
    monkeypatch.setenv("TIRGRPO_LOG_DIR", str(tmp_path / "logs"))
    monkeypatch.delenv("TIRGRPO_DEBUG", raising=False)
    _fake_command(monkeypatch, RuntimeError("a real bug\nsecond line"))
    assert main(["fake"]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    first, second = err.strip().split("\n")
    assert first == "tirgrpo fake: internal error: RuntimeError: a real bug"
    (log,) = (tmp_path / "logs").iterdir()
    assert str(log) in second and "--debug" in second
    text = log.read_text()
    assert "Traceback" in text and "RuntimeError: a real bug" in text and "tirgrpo fake" in text
    with pytest.raises(RuntimeError, match="a real bug"):
        main(["--debug", "fake"])
    monkeypatch.setenv("TIRGRPO_DEBUG", "1")
    with pytest.raises(RuntimeError):
        main(["fake"])


def test_os_error_is_a_user_error_naming_the_path(monkeypatch, capsys):
    _fake_command(monkeypatch, PermissionError(13, "Permission denied", "/out/x.jsonl"))
    assert main(["fake"]) == 2
    assert capsys.readouterr().err == "tirgrpo fake: error: Permission denied: /out/x.jsonl\n"


def test_console_help_without_importing_torch():
    """`python -m tirgrpo --help` answers in a fresh process and never imports torch."""
    code = "import sys, runpy; sys.argv = ['tirgrpo', '--help']\n" \
           "try:\n    runpy.run_module('tirgrpo', run_name='__main__')\nexcept SystemExit as e:\n" \
           "    assert e.code in (0, None), e.code\nassert 'torch' not in sys.modules, 'torch imported'\n"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "usage: tirgrpo" in proc.stdout


def test_missing_dependency_of_a_command_is_one_line(monkeypatch, capsys):
    monkeypatch.setitem(cli.COMMANDS, "fake", ("tirgrpo_no_such_module_x", "a test command"))
    assert main(["fake"]) == 2
    err = capsys.readouterr().err
    assert "cannot load the command" in err and "tirgrpo_no_such_module_x" in err and "Traceback" not in err
