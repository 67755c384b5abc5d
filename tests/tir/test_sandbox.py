"""The code sandbox: output truncation, one ordinary run per mode, the hostile-code suite, the CLI.

The hostile suite (`tirgrpo.tir.sandbox.selftest`) runs in every isolating mode that works on this
machine (bwrap and/or namespaces) and prints its table to the terminal. Where none works, the
sandbox must refuse to run code unless unsandboxed networking is allowed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tirgrpo.tir import sandbox as sb
from tirgrpo.tir.sandbox import runner
from tirgrpo.tir.sandbox import Sandbox, SandboxUnavailable, truncate_output

MODES = sb.available_modes()
needs_isolation = pytest.mark.skipif(not MODES, reason="no isolating sandbox mode works here (see test_refuses_*)")


def test_truncate_keeps_head_and_tail_and_cuts_long_lines():
    text = "\n".join(f"line {i}" for i in range(2000))
    out, cut = truncate_output(text)
    assert cut and out.startswith("line 0\nline 1\n") and out.endswith("line 1999")
    assert len(out) < 4100 and "characters omitted" in out
    long_line = "a" * 100 + "b" * 5000 + "c" * 100
    out, cut = truncate_output(long_line)
    assert cut and out.startswith("a" * 100 + "...") and out.endswith("..." + "c" * 100) and "b" not in out
    assert truncate_output("short\n") == ("short\n", False)


@needs_isolation
@pytest.mark.parametrize("mode", MODES)
def test_ordinary_program(mode):
    r = Sandbox(mode=mode, timeout_s=10).run(
        "import os, sympy\nprint(sympy.Integer(6) * 7)\nprint(sorted(os.environ))\nprint(os.getcwd())\n"
    )
    assert r.ok and r.exit_code == 0 and r.killed_by is None and not r.timed_out and r.mode == mode
    lines = r.stdout.splitlines()
    assert lines[0] == "42"
    env = eval(lines[1])
    assert set(env) <= set(runner._ENV_FIXED) | {"HOME", "TMPDIR", "TZ"}
    assert lines[2] == "."  # the temporary working directory is not shown
    assert r.output() == r.stdout.rstrip("\n")


@needs_isolation
@pytest.mark.parametrize("mode", MODES)
def test_hostile_suite(mode, capsys):
    import io

    buf = io.StringIO()
    passed, failed, rows = sb.selftest(Sandbox(mode=mode, timeout_s=2), out=buf)
    with capsys.disabled():
        print("\n" + buf.getvalue(), end="")
    assert f"{passed} passed, {failed} failed" in buf.getvalue()
    assert len(rows) == 16
    assert failed == 0, buf.getvalue()


@needs_isolation
def test_timeout_output_and_result_fields():
    r = Sandbox(timeout_s=1).run("print('before', flush=True)\nwhile True:\n    pass\n")
    assert r.timed_out and r.killed_by == "timeout" and r.exit_code is None and not r.ok
    assert r.stdout == "before\n" and 0.9 < r.wall_s < 3
    assert r.output().startswith("before\nTimeoutError")


def test_refuses_without_namespaces(monkeypatch):
    monkeypatch.setattr(runner, "available_modes", lambda: [])
    monkeypatch.delenv("TIRGRPO_SANDBOX_MODE", raising=False)
    with pytest.raises(SandboxUnavailable, match="allow-unsandboxed-network"):
        Sandbox().run("print(1)")
    assert Sandbox(allow_unsandboxed_network=True).resolved_mode() == "rlimits"


def test_bad_settings():
    with pytest.raises(Exception, match="mode"):
        Sandbox(mode="docker")
    with pytest.raises(Exception, match="timeout"):
        Sandbox(timeout_s=0)


@needs_isolation
def test_cli_sandbox_run_prints_json(tmp_path):
    f = tmp_path / "loop.py"
    f.write_text("import sys\nprint('x' * 5000)\nsys.exit(3)\n")
    p = subprocess.run([sys.executable, "-m", "tirgrpo", "sandbox", "run", str(f), "--timeout", "3"],
                       capture_output=True, text=True, timeout=60)
    result = json.loads(p.stdout)
    assert p.returncode == 1
    assert set(result) >= {"ok", "exit_code", "stdout", "stderr", "timed_out", "killed_by", "truncated", "wall_s"}
    assert result["exit_code"] == 3 and result["truncated"] and not result["ok"] and result["killed_by"] is None
    assert result["stdout"].startswith("x" * 100 + "...")


def test_cli_sandbox_run_missing_file(tmp_path):
    from tirgrpo.cli import main

    assert main(["sandbox", "run", str(tmp_path / "nope.py")]) == 2


@needs_isolation
def test_auto_says_which_mode_and_why(monkeypatch, capsys):
    monkeypatch.delenv("TIRGRPO_SANDBOX_MODE", raising=False)
    monkeypatch.setattr(runner, "_announced", [])
    assert Sandbox(timeout_s=10).run("print(1)").ok
    assert Sandbox(timeout_s=10).run("print(1)").ok
    err = capsys.readouterr().err
    assert err.count("tirgrpo: sandbox mode") == 1  # once per process
    mode, why = sb.mode_choice()
    assert f"sandbox mode {mode} ({why})" in err and "seccomp filter" in err


@needs_isolation
def test_without_libseccomp_runs_and_says_so(monkeypatch):
    from tirgrpo.tir.sandbox import seccomp

    monkeypatch.setattr(seccomp, "build_filter", lambda: None)
    monkeypatch.setattr(seccomp, "unavailable_reason", lambda: "libseccomp's shared library cannot be loaded")
    assert Sandbox(timeout_s=10).run("print(1)").ok
    assert "seccomp filter off: libseccomp" in sb.describe_choice()


@needs_isolation
@pytest.mark.parametrize("mode", MODES)
def test_private_tmp_is_capped_and_host_tmp_invisible(mode, tmp_path):
    (tmp_path / "host-secret").write_text("s")
    r = Sandbox(mode=mode, timeout_s=10, disk_mb=8).run(
        "import os\nprint(os.path.exists(%r), len(os.listdir('/tmp')))\n"
        "try:\n    open('/tmp/big', 'wb').write(b'x' * (20 << 20))\nexcept OSError as e:\n    print('errno', e.errno)\n"
        % str(tmp_path / "host-secret"))
    # /tmp holds only the working directory, and the python installation where it lives under /tmp
    # (bound back read-only, e.g. a clone with its venv under /tmp); writing past the cap: ENOSPC
    seen = 1 + (1 if sys.prefix.startswith("/tmp/") else 0)
    assert r.stdout.split("\n")[:2] == [f"False {seen}", "errno 28"], r


@pytest.mark.skipif("bwrap" not in MODES, reason="bubblewrap does not work here")
def test_bwrap_works_with_a_venv_under_tmp(tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    code = ("from tirgrpo.tir.sandbox import Sandbox\n"
            "r = Sandbox(mode='bwrap', timeout_s=20).run('print(6 * 7)')\nprint(r.stdout.strip(), r.ok)\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    p = subprocess.run([str(venv / "bin" / "python"), "-c", code], capture_output=True, text=True, env=env,
                       timeout=120)
    assert p.stdout.strip() == "42 True", p.stderr[-2000:]
