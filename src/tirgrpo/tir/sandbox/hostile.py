"""The hostile-code self test: programs that try to escape, and what must stop each."""

from __future__ import annotations

import os
import pwd
import secrets
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from tirgrpo.tir.sandbox.output import DEFAULT_MAX_OUTPUT_BYTES, SandboxResult
from tirgrpo.tir.sandbox.runner import Sandbox

# ----------------------------------------------------------------------------- hostile-code self test


@dataclass
class HostileCase:
    name: str
    tried: str
    code: str


_DISK_FILL = """import os
total, errors = 0, []
block = b'x' * (1 << 20)
for d in ('.', '/tmp'):
    for i in range(128):
        try:
            with open(os.path.join(d, 'fill%d' % i), 'wb') as f:
                for _ in range(16):
                    f.write(block)
                    total += len(block)
        except OSError as e:
            errors.append(e.errno)
            break
print('written_mb', total >> 20, 'errnos', errors)
"""

_READ_PROJECT = """import os
found = []
for p in [%r, %r]:
    try:
        open(p, 'rb').read()
        found.append(p)
    except OSError:
        pass
for d, name in [(%r, 'pyproject.toml'), ('/tmp', %r)]:
    try:
        if name in os.listdir(d):
            found.append(d)
    except OSError:
        pass
print('FOUND' if found else 'nothing', found)
"""

_NESTED = """import ctypes, os, subprocess
libc = ctypes.CDLL(None, use_errno=True)
done = []
for name, flag in [('user', 0x10000000), ('mount', 0x20000), ('net', 0x40000000), ('pid', 0x20000000)]:
    if libc.unshare(flag) == 0:
        done.append('unshare ' + name)
if libc.mount(b'tmpfs', b'/tmp', b'tmpfs', 0, None) == 0:
    done.append('mount')
if libc.ptrace(16, os.getppid(), 0, 0) == 0:
    done.append('ptrace')
try:
    if subprocess.run(['unshare', '-Ur', 'true'], capture_output=True).returncode == 0:
        done.append('unshare -Ur')
except OSError:
    pass
print('ESCAPED' if done else 'refused', done)
"""

_PROC = """import os
found = []
if %d in [int(e) for e in os.listdir('/proc') if e.isdigit()]:
    found.append('sees the caller pid')
for p in ['/proc/1/root' + %r, '/proc/%d/root' + %r, '/proc/%d/environ', '/proc/1/environ']:
    try:
        if %r in open(p, 'rb').read():
            found.append(p)
    except OSError:
        pass
for p, data in [('/proc/sys/kernel/hostname', 'pwned'), ('/proc/sysrq-trigger', 'h'),
                ('/proc/self/oom_score_adj', '-1000')]:
    try:
        with open(p, 'w') as f:
            f.write(data)
        found.append('wrote ' + p)
    except OSError:
        pass
print('FOUND' if found else 'nothing', found)
"""


def hostile_cases(ctx: dict) -> list[HostileCase]:
    """The hostile programs of the self test. `ctx` fills in host-side facts (paths, ports, pids)."""
    return [
        HostileCase("infinite loop", "spin forever", "while True:\n    pass\n"),
        HostileCase("fork bomb", "fork without end",
                    "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n"),
        # One 8 GiB block: filling smaller blocks first takes seconds on a busy machine, and the
        # address-space limit refuses the reservation whatever its size.
        HostileCase("memory bomb", "allocate 8 GB",
                    "block = bytearray(8 * 2**30)\nprint('allocated')\n"),
        HostileCase("100 MB output", "print 100 MB",
                    "import sys\nline = 'x' * 1023 + '\\n'\nfor _ in range(100 * 1024):\n    sys.stdout.write(line)\n"),
        # Recursing through map() uses the C stack at every level, so it overflows it.
        HostileCase("deep recursion", "recurse past the C stack",
                    "import sys\nsys.setrecursionlimit(10**8)\ndef f(n):\n    return list(map(f, [n + 1]))\nf(0)\n"),
        HostileCase("write outside", f"write {ctx['home_target']} and {ctx['tmp_target']}",
                    "for p in [%r, %r]:\n    try:\n        open(p, 'w').write('pwned')\n        print('wrote', p)\n"
                    "    except OSError as e:\n        print('refused', p, type(e).__name__)\n"
                    % (ctx["home_target"], ctx["tmp_target"])),
        HostileCase("env secrets", "read the caller's environment variables",
                    "import os, glob\nfound = [k for k, v in os.environ.items() if %r in v]\n"
                    "for p in glob.glob('/proc/*/environ'):\n    try:\n        if %r in open(p, 'rb').read():\n"
                    "            found.append(p)\n    except OSError:\n        pass\nprint('FOUND' if found else 'nothing', found)\n"
                    % (ctx["secret"], ctx["secret"].encode())),
        HostileCase("network", f"connect to 127.0.0.1:{ctx['port']} (the host listens)",
                    "import socket\ns = socket.socket()\ns.settimeout(2)\ntry:\n    s.connect(('127.0.0.1', %d))\n"
                    "    s.sendall(b'pwned')\n    print('CONNECTED')\nexcept OSError as e:\n    print('refused', type(e).__name__, e)\n"
                    % ctx["port"]),
        HostileCase("orphan child", "leave a child running after exit",
                    "import subprocess, sys\nsubprocess.Popen([sys.executable, '-c', 'import time; time.sleep(30)  # %s'])\n"
                    "print('spawned')\n" % ctx["token"]),
        HostileCase("kill parent", "os.kill the parent and a process of the caller",
                    "import os, signal\nfor pid in (os.getppid(), %d):\n    try:\n        os.kill(pid, signal.SIGKILL)\n"
                    "        print('killed', pid)\n    except OSError as e:\n        print('refused', pid, type(e).__name__)\n"
                    % ctx["decoy_pid"]),
        HostileCase("disk fill", f"write 2 GB in the working directory and /tmp (limit {ctx['disk_mb']} MB)",
                    _DISK_FILL),
        HostileCase("read project", "read the project tree and a file in the host's /tmp",
                    _READ_PROJECT % (ctx["project_file"], ctx["host_tmp_file"], os.path.dirname(ctx["project_file"]),
                                     os.path.basename(ctx["host_tmp_file"]))),
        HostileCase("nested namespaces", "unshare user/mount/net/pid namespaces, mount, ptrace the parent",
                    _NESTED),
        HostileCase("/proc escapes", "reach the host through /proc (pids, root links, environ, sysctl)",
                    _PROC % (ctx["decoy_pid"], ctx["host_tmp_file"], ctx["decoy_pid"], ctx["host_tmp_file"],
                             ctx["decoy_pid"], ctx["secret"].encode())),
        HostileCase("error traceback", "NameError; the traceback must not show temp paths",
                    "def f():\n    return undefined_name\nf()\n"),
        HostileCase("syntax error", "SyntaxError; the message must not show temp paths", "print(1 +\n"),
    ]


def _judge(case: HostileCase, r: SandboxResult, ctx: dict) -> tuple[bool, str]:
    """(contained?, what stopped it) for one case's result and the host-side evidence."""
    if case.name == "infinite loop":
        return r.timed_out, "wall-clock timeout" if r.timed_out else f"not stopped ({r.killed_by})"
    if case.name == "fork bomb":
        blocked = r.timed_out or r.killed_by is not None
        return blocked and ctx["pids_after"] <= ctx["pids_before"] + 5, (
            f"process limit ({ctx['max_processes']}), then {r.killed_by}; whole group killed")
    if case.name == "memory bomb":
        return r.killed_by == "memory" and "allocated" not in r.stdout, f"address-space limit -> {r.killed_by}"
    if case.name == "100 MB output":
        return r.truncated and len(r.stdout) < 5000 and r.killed_by == "output", (
            f"output limit ({DEFAULT_MAX_OUTPUT_BYTES // 2**20} MB read, {len(r.stdout)} chars kept) -> {r.killed_by}")
    if case.name == "deep recursion":
        return not r.ok and r.killed_by is not None or "RecursionError" in r.stderr, f"crash contained ({r.killed_by or 'RecursionError'})"
    if case.name == "write outside":
        leaked = [p for p in (ctx["home_target"], ctx["tmp_target"]) if os.path.exists(p)]
        how = "read-only file system" if "OSError" in r.stdout or "PermissionError" in r.stdout else r.stdout.strip()[:60]
        return not leaked, f"nothing written on the host ({how})" if not leaked else f"WROTE {leaked}"
    if case.name == "env secrets":
        return "nothing" in r.stdout, "environment scrubbed to an allow-list" if "nothing" in r.stdout else r.stdout[:80]
    if case.name == "network":
        contained = "CONNECTED" not in r.stdout and not ctx["accepted"]
        return contained, ("no network: " + r.stdout.strip().split("\n")[-1][:60]) if contained else "CONNECTED"
    if case.name == "orphan child":
        return ctx["orphans"] == 0, "process group / PID namespace killed at exit" if ctx["orphans"] == 0 else "child survived"
    if case.name == "kill parent":
        decoy_ok = ctx["decoy_alive"]
        return decoy_ok, (f"caller's process untouched; sandbox: {r.stdout.strip().replace(chr(10), '; ')[:70]}"
                          if decoy_ok else "killed a process outside the sandbox")
    if case.name == "disk fill":
        words = r.stdout.split()
        written = int(words[1]) if len(words) > 1 and words[1].isdigit() else None
        capped = written is not None and written <= ctx["disk_mb"] + 16 and "28" in r.stdout  # ENOSPC
        return capped, (f"private tmpfs full at {written} MB (ENOSPC)" if capped else f"not capped: {r.stdout[:80]}")
    if case.name in ("read project", "/proc escapes"):
        hidden = r.stdout.startswith("nothing")
        return hidden, "not visible in the sandbox" if hidden else r.stdout[:100]
    if case.name == "nested namespaces":
        refused = r.stdout.startswith("refused")
        return refused, "seccomp filter: EPERM" if refused else r.stdout[:100]
    if case.name in ("error traceback", "syntax error"):
        expected = "NameError" if case.name == "error traceback" else "SyntaxError"
        clean = "tirgrpo-sandbox-" not in r.stderr and tempfile.gettempdir() + "/" not in r.stderr
        return expected in r.stderr and clean and 'File "main.py"' in r.stderr, "traceback shows main.py, no temp path"
    raise AssertionError(case.name)


def _project_file() -> str:
    """A file of the project tree the sandbox must not see: the checkout's pyproject.toml, else
    one in the caller's working directory."""
    root = Path(__file__).resolve().parents[4]
    if (root / "pyproject.toml").is_file():
        return str(root / "pyproject.toml")
    return os.path.join(os.getcwd(), "pyproject.toml")


def _find_processes(token: str) -> int:
    n = 0
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if token.encode() in Path(f"/proc/{entry}/cmdline").read_bytes():
                    n += 1
            except OSError:
                pass
    return n


def selftest(sandbox: Sandbox, out=sys.stdout) -> tuple[int, int, list[tuple[str, str, str, bool]]]:
    """Run every hostile case; print a table and `N passed, N failed`. Returns (passed, failed, rows)."""
    import socket

    mode = sandbox.resolved_mode()
    token = secrets.token_hex(8)
    home = pwd.getpwuid(os.getuid()).pw_dir
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    listener.settimeout(0.2)
    decoy = subprocess.Popen(["sleep", "60"], start_new_session=True)
    secret = "tirgrpo-secret-" + token
    ctx = {
        "token": token, "secret": secret, "port": listener.getsockname()[1], "decoy_pid": decoy.pid,
        "home_target": os.path.join(home, f".tirgrpo-selftest-{token}"),
        "tmp_target": os.path.join(tempfile.gettempdir(), f"tirgrpo-selftest-{token}"),
        "max_processes": sandbox.max_processes, "disk_mb": sandbox.disk_mb,
        "project_file": _project_file(),
        "host_tmp_file": os.path.join(tempfile.gettempdir(), f"tirgrpo-selftest-host-{token}"),
    }
    Path(ctx["host_tmp_file"]).write_text(secret)
    old_secret = os.environ.get("TIRGRPO_SELFTEST_SECRET")
    os.environ["TIRGRPO_SELFTEST_SECRET"] = secret
    rows = []
    try:
        for case in hostile_cases(ctx):
            ctx["pids_before"] = sum(1 for e in os.listdir("/proc") if e.isdigit())
            r = sandbox._run(case.code, mode)
            time.sleep(0.2)
            ctx["pids_after"] = sum(1 for e in os.listdir("/proc") if e.isdigit())
            ctx["orphans"] = _find_processes(token + "'])") if case.name != "orphan child" else _find_processes("# " + token)
            try:
                conn, _ = listener.accept()
                conn.close()
                ctx["accepted"] = True
            except OSError:
                ctx["accepted"] = False
            ctx["decoy_alive"] = decoy.poll() is None
            contained, how = _judge(case, r, ctx)
            rows.append((case.name, case.tried, how, contained))
            for p in (ctx["home_target"], ctx["tmp_target"]):
                if os.path.exists(p):
                    os.unlink(p)
    finally:
        Path(ctx["host_tmp_file"]).unlink(missing_ok=True)
        listener.close()
        decoy.kill()
        decoy.wait()
        if old_secret is None:
            os.environ.pop("TIRGRPO_SELFTEST_SECRET", None)
        else:
            os.environ["TIRGRPO_SELFTEST_SECRET"] = old_secret
    passed = sum(1 for row in rows if row[3])
    failed = len(rows) - passed
    print(f"hostile-code self test, mode {mode}:", file=out)
    w0, w1 = max(len(r[0]) for r in rows), max(len(r[1]) for r in rows)
    print(f"  {'case':<{w0}}  {'result':<6}  {'tried':<{w1}}  stopped by", file=out)
    for name, tried, how, ok in rows:
        print(f"  {name:<{w0}}  {'PASS' if ok else 'FAIL':<6}  {tried:<{w1}}  {how}", file=out)
    print(f"{passed} passed, {failed} failed", file=out)
    return passed, failed, rows


