"""The host side of the sandbox: `Sandbox.run(code)` and the choice of isolation mode."""

from __future__ import annotations

import json
import math
import os
import pwd
import secrets
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from tirgrpo.errors import TirgrpoError
from tirgrpo.tir.sandbox.boot import BOOT
from tirgrpo.tir.sandbox.output import DEFAULT_MAX_OUTPUT_BYTES, SandboxResult, _Capture, clean_paths, truncate_output

MODES = ("bwrap", "namespaces", "rlimits")

DEFAULT_TIMEOUT_S = 5.0
DEFAULT_MEMORY_MB = 2048
DEFAULT_MAX_PROCESSES = 32
DEFAULT_FILE_SIZE_MB = 64
SCRIPT_NAME = "main.py"
# Uids handed to sandboxed code when we run as root: a high range no real account uses, one
# fresh uid per execution (so RLIMIT_NPROC counts only that execution's processes).
_UID_BASE, _UID_SPAN = 1_500_000_000, 500_000_000

# The only environment the code sees (fixed values, nothing copied from the caller's environment
# except the locale/timezone names in _ENV_PASSTHROUGH).
_ENV_FIXED = {
    "PATH": "/usr/local/bin:/usr/bin:/bin",
    "LANG": "C.UTF-8",
    "LC_ALL": "C.UTF-8",
    "PYTHONIOENCODING": "utf-8",
    "PYTHONDONTWRITEBYTECODE": "1",
    # Thread pools (numpy/BLAS) count against the process limit; one thread is plenty.
    "OMP_NUM_THREADS": "1",
    "OPENBLAS_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "MPLBACKEND": "Agg",
}
_ENV_PASSTHROUGH = ("TZ",)


class SandboxUnavailable(TirgrpoError):
    """The requested isolation cannot be had on this machine."""



# ----------------------------------------------------------------------------- host side


def _home_dirs() -> list[str]:
    """Folders hidden from the sandbox: users' homes (secrets, dotfiles)."""
    dirs = {"/root", "/home"}
    try:
        dirs.add(pwd.getpwuid(os.getuid()).pw_dir)
    except KeyError:
        pass
    if os.environ.get("HOME"):
        dirs.add(os.environ["HOME"])
    out = []
    for d in sorted(dirs):
        real = os.path.realpath(d)
        if real not in ("/", "/tmp") and os.path.isdir(real) and real not in out:
            out.append(real)
    # Nested ones are covered by their parent's tmpfs.
    return [d for d in out if not any(d != o and d.startswith(o + "/") for o in out)]


def _python_dirs() -> list[str]:
    """Folders the sandboxed Python needs (interpreter, stdlib, site-packages)."""
    paths = {sys.prefix, sys.base_prefix, sys.exec_prefix, os.path.dirname(sys.executable)}
    paths.add(os.path.dirname(os.path.dirname(os.path.realpath(sys.executable))))
    paths.update(p for p in sys.path if p and os.path.isdir(p))
    return sorted({os.path.realpath(p) for p in paths} | paths)


def _exposed(hidden: list[str]) -> list[str]:
    """The Python folders that lie under a hidden folder: bound back read-only."""
    inside = [p for p in _python_dirs() if any(p == h or p.startswith(h + "/") for h in hidden)]
    inside = [p for p in inside if os.path.isdir(p) and not os.path.islink(p)]
    return [p for p in inside if not any(p != o and p.startswith(o + "/") for o in inside)]


def _sandbox_env(workdir: str) -> dict[str, str]:
    env = dict(_ENV_FIXED, HOME=workdir, TMPDIR=workdir)
    env.update({k: os.environ[k] for k in _ENV_PASSTHROUGH if k in os.environ})
    return env


def _count_processes(uid: int) -> int:
    """How many processes `uid` runs now (RLIMIT_NPROC counts them all outside a user namespace)."""
    n = 0
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if os.stat(f"/proc/{entry}").st_uid == uid:
                    n += 1
            except OSError:
                pass
    return n


@dataclass
class Sandbox:
    """Settings of the sandbox; `run(code)` executes one program.

    mode: "auto" (the best mode that works here), or one of MODES.
    """

    timeout_s: float = DEFAULT_TIMEOUT_S
    memory_mb: int = DEFAULT_MEMORY_MB
    max_processes: int = DEFAULT_MAX_PROCESSES
    file_size_mb: int = DEFAULT_FILE_SIZE_MB
    max_output_bytes: int = DEFAULT_MAX_OUTPUT_BYTES
    mode: str = "auto"
    allow_unsandboxed_network: bool = False

    def __post_init__(self):
        if self.mode != "auto" and self.mode not in MODES:
            raise TirgrpoError(f"sandbox mode must be auto or one of {MODES}, got {self.mode!r}")
        if not self.timeout_s > 0:
            raise TirgrpoError(f"sandbox timeout must be > 0 seconds, got {self.timeout_s}")
        if self.memory_mb < 64:
            raise TirgrpoError(f"sandbox memory limit must be >= 64 MB, got {self.memory_mb}")
        if self.max_processes < 1:
            raise TirgrpoError(f"sandbox process limit must be >= 1, got {self.max_processes}")

    def resolved_mode(self) -> str:
        """The mode this sandbox runs in; raises SandboxUnavailable when it would be unsafe."""
        mode = self.mode if self.mode != "auto" else best_mode()
        if mode != "rlimits" and mode not in available_modes():
            raise SandboxUnavailable(f"sandbox mode {mode!r} does not work on this machine: {probe_errors.get(mode, '')}")
        if mode == "rlimits" and not self.allow_unsandboxed_network:
            why = ("sandbox mode rlimits was asked for" if self.mode == "rlimits" else
                   "this machine cannot create namespaces (no working bubblewrap, unshare refused)")
            raise SandboxUnavailable(
                f"{why}: code would run with network access and a writable file system; install bubblewrap or "
                "allow user namespaces, or pass --allow-unsandboxed-network to run anyway (see docs/security.md)"
            )
        return mode

    def run(self, code: str) -> SandboxResult:
        """Execute `code` as main.py in a fresh contained process and return what happened."""
        return self._run(code, self.resolved_mode())

    # -- internals

    def _run(self, code: str, mode: str) -> SandboxResult:
        root = os.geteuid() == 0
        uid = _UID_BASE + secrets.randbelow(_UID_SPAN) if root else None
        workdir = tempfile.mkdtemp(prefix="tirgrpo-sandbox-")
        # Pipe fds still ours to close. With concurrent executions a stale close could hit
        # another thread's reused fd number, so each fd is closed exactly once.
        open_fds: list[int] = []
        try:
            Path(workdir, SCRIPT_NAME).write_text(code, encoding="utf-8")
            if uid is not None:
                for p in (workdir, os.path.join(workdir, SCRIPT_NAME)):
                    os.chown(p, uid, uid)
            cpu = max(1, math.ceil(self.timeout_s)) + 1
            nproc = self.max_processes + 2  # + the bootstrap's supervisor and the program itself
            if mode == "rlimits" and uid is None:
                nproc += _count_processes(os.getuid())
            status_r, status_w = os.pipe()
            open_fds += [status_r, status_w]
            hidden = _home_dirs()
            cfg = {
                "mode": mode,
                "userns": not root,
                "workdir": workdir,
                "python": sys.executable,
                "script": SCRIPT_NAME,
                "uid": uid,
                "env": _sandbox_env(workdir),
                "status_fd": status_w,
                "hide": hidden,
                "expose": _exposed(hidden),
                "limits": {"as": self.memory_mb * 2**20, "cpu": cpu, "fsize": self.file_size_mb * 2**20, "nproc": nproc},
            }
            argv = [sys.executable, "-I", "-S", "-c", BOOT, json.dumps(cfg)]
            if mode == "bwrap":
                argv = self._bwrap_argv(cfg, root) + argv
            return self._supervise(argv, cfg, open_fds, mode)
        finally:
            for fd in open_fds:
                os.close(fd)
            shutil.rmtree(workdir, ignore_errors=True)

    @staticmethod
    def _bwrap_argv(cfg: dict, root: bool) -> list[str]:
        argv = ["bwrap", "--die-with-parent", "--unshare-pid", "--unshare-net", "--unshare-ipc", "--unshare-uts",
                "--unshare-cgroup-try"]
        # As root bwrap keeps its capabilities without a user namespace, which the bootstrap needs
        # to switch to the sandbox uid; otherwise a user namespace gives the isolation.
        if not root:
            argv.append("--unshare-user")
        argv += ["--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc", "--tmpfs", "/tmp"]
        for d in cfg["hide"]:
            argv += ["--tmpfs", d]
        for p in cfg["expose"]:
            # Folders bwrap creates on the way are 0700 by default: the sandbox uid must pass.
            hidden_root = next(d for d in cfg["hide"] if p.startswith(d + "/"))
            parts = Path(p).relative_to(hidden_root).parts
            for i in range(1, len(parts)):
                argv += ["--perms", "0755", "--dir", str(Path(hidden_root, *parts[:i]))]
            argv += ["--ro-bind", p, p]
        for d in cfg["hide"]:
            argv += ["--remount-ro", d]
        argv += ["--bind", cfg["workdir"], cfg["workdir"], "--chdir", cfg["workdir"], "--clearenv"]
        for k, v in cfg["env"].items():
            argv += ["--setenv", k, v]
        argv.append("--")
        return argv

    def _supervise(self, argv, cfg, open_fds: list[int], mode) -> SandboxResult:
        status_r, status_w = open_fds
        start = time.monotonic()
        proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            pass_fds=(status_w,), start_new_session=True, env=cfg["env"], close_fds=True,
        )
        open_fds.remove(status_w)
        os.close(status_w)
        captures = {proc.stdout: _Capture(), proc.stderr: _Capture()}
        status_chunks: list[bytes] = []
        sel = selectors.DefaultSelector()
        for f in (proc.stdout, proc.stderr):
            os.set_blocking(f.fileno(), False)
            sel.register(f, selectors.EVENT_READ)
        os.set_blocking(status_r, False)
        sel.register(status_r, selectors.EVENT_READ)
        deadline = start + self.timeout_s
        killed_by, timed_out, exited_at = None, False, None
        try:
            while sel.get_map():
                now = time.monotonic()
                if exited_at is None and proc.poll() is not None:
                    # The bootstrap is gone: kill whatever the program left running in its
                    # group, then drain the pipes (bounded, in case something escaped the group).
                    exited_at = now
                    _killpg(proc.pid)
                if exited_at is not None and now > exited_at + 1.0:
                    break
                if exited_at is None and now >= deadline:
                    timed_out, killed_by = True, "timeout"
                    _killpg(proc.pid)
                    exited_at = now
                    continue
                wait = min(0.05, max(0.0, deadline - now))
                for key, _ in sel.select(timeout=wait):
                    fobj = key.fileobj
                    fd = fobj if isinstance(fobj, int) else fobj.fileno()
                    try:
                        data = os.read(fd, 65536)
                    except BlockingIOError:
                        continue
                    if not data:
                        sel.unregister(fobj)
                        continue
                    if fobj is status_r:
                        status_chunks.append(data)
                        continue
                    captures[fobj].add(data)
                    if killed_by is None and sum(c.total for c in captures.values()) > self.max_output_bytes:
                        killed_by = "output"
                        _killpg(proc.pid)
                        exited_at = time.monotonic()
        finally:
            sel.close()
            _killpg(proc.pid)
            proc.wait()
            proc.stdout.close()
            proc.stderr.close()
        wall = time.monotonic() - start

        exit_code, status = None, None
        for line in b"".join(status_chunks).splitlines():
            try:
                message = json.loads(line)
            except json.JSONDecodeError:
                continue
            if "setup_error" in message:
                # The bootstrap could not build the sandbox (before any of the code ran): this
                # machine's problem, not a result of the code.
                raise SandboxUnavailable(f"sandbox mode {mode}: setup failed: {message['setup_error']}")
            status = message.get("status", status)
        if status is not None and not timed_out and killed_by != "output":
            raw = status
            if os.WIFEXITED(raw):
                exit_code = os.WEXITSTATUS(raw)
            elif os.WIFSIGNALED(raw):
                sig = os.WTERMSIG(raw)
                exit_code = -sig
                killed_by = {signal.SIGXCPU: "cpu", signal.SIGXFSZ: "file-size"}.get(sig, f"signal {signal.Signals(sig).name}")
        elif killed_by is None and proc.returncode not in (0, None):
            # No status: the bootstrap failed or was killed (e.g. by the program).
            killed_by = f"supervisor exit {proc.returncode}"

        texts = {}
        truncated = False
        for name, f in (("stdout", proc.stdout), ("stderr", proc.stderr)):
            text, cut_bytes = captures[f].text()
            text, cut_chars = truncate_output(clean_paths(text, cfg["workdir"]))
            texts[name] = text
            truncated = truncated or cut_bytes or cut_chars
        if killed_by is None and exit_code not in (0, None) and _last_line(texts["stderr"]).startswith("MemoryError"):
            killed_by = "memory"
        ok = exit_code == 0 and killed_by is None
        return SandboxResult(ok, exit_code, texts["stdout"], texts["stderr"], timed_out, killed_by, truncated,
                             round(wall, 3), mode)


def _last_line(text: str) -> str:
    lines = [line for line in text.strip().split("\n") if line.strip()]
    return lines[-1] if lines else ""


def _killpg(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


# ----------------------------------------------------------------------------- mode probing

_probe_lock = threading.Lock()
_probed: list[str] | None = None
probe_errors: dict[str, str] = {}


def available_modes() -> list[str]:
    """The isolating modes that work on this machine (probed once: each runs `print('ok')`)."""
    global _probed
    with _probe_lock:
        if _probed is None:
            found = []
            for mode in ("bwrap", "namespaces"):
                if mode == "bwrap" and shutil.which("bwrap") is None:
                    probe_errors[mode] = "bwrap is not installed (Debian/Ubuntu: apt-get install bubblewrap)"
                    continue
                try:
                    r = Sandbox(timeout_s=20)._run("print('ok')", mode)
                except (OSError, TirgrpoError) as e:
                    r = None
                    probe_errors[mode] = str(e)
                if r is not None and r.ok and r.stdout.strip() == "ok":
                    found.append(mode)
                elif r is not None:
                    probe_errors[mode] = (r.stderr.strip() or f"exit {r.exit_code}")[-300:]
            _probed = found
        return list(_probed)


def best_mode() -> str:
    """The strongest mode that works here ("rlimits" when no namespaces can be made)."""
    env = os.environ.get("TIRGRPO_SANDBOX_MODE")
    if env:
        return env
    modes = available_modes()
    return modes[0] if modes else "rlimits"


