"""The host side of the sandbox: `Sandbox.run(code)` and the choice of isolation mode."""

from __future__ import annotations

import base64
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
# The private tmpfs that holds /tmp and the working directory (namespaces and bwrap modes): all
# the code can write, in all files together. It lives in RAM (shared memory), hence small.
DEFAULT_DISK_MB = 128
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


def _outermost(dirs: list[str]) -> list[str]:
    """`dirs` without those nested in another one (a parent's tmpfs covers them)."""
    return [d for d in dirs if not any(d != o and d.startswith(o + "/") for o in dirs)]


# Never hidden, even as the caller's working directory: the sandbox's Python needs them.
_SYSTEM_DIRS = ("/usr", "/etc", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/proc", "/sys", "/dev", "/run", "/boot")


def _project_dirs() -> list[str]:
    """The project tree: the source checkout tirgrpo runs from (if it is one) and the caller's
    working directory, where runs, data and configs live."""
    out = []
    root = Path(__file__).resolve().parents[4]
    if (root / "pyproject.toml").is_file():
        out.append(str(root))
    try:
        cwd = os.path.realpath(os.getcwd())
    except OSError:
        cwd = "/"
    prefixes = [os.path.realpath(p) for p in (sys.prefix, sys.base_prefix)]
    system = cwd in ("/", "/var", "/opt") or any(cwd == d or cwd.startswith(d + "/") for d in _SYSTEM_DIRS)
    if not system and not any(cwd == p or cwd.startswith(p + "/") for p in prefixes):
        out.append(cwd)
    return out


def _hidden_dirs() -> list[str]:
    """Folders covered by an empty read-only tmpfs: users' homes (secrets, dotfiles), the project
    tree, /var/tmp and /dev/shm. /tmp is covered separately, by the writable size-capped tmpfs."""
    dirs = {"/root", "/home", "/var/tmp", "/dev/shm"}
    try:
        dirs.add(pwd.getpwuid(os.getuid()).pw_dir)
    except KeyError:
        pass
    if os.environ.get("HOME"):
        dirs.add(os.environ["HOME"])
    dirs.update(_project_dirs())
    out = []
    for d in sorted(dirs):
        real = os.path.realpath(d)
        if real in ("/", "/tmp") or real.startswith("/tmp/") or not os.path.isdir(real) or real in out:
            continue
        out.append(real)
    return _outermost(sorted(out))


def _python_dirs() -> list[str]:
    """Folders the sandboxed Python needs: interpreter, stdlib, site-packages (never the project's
    own source folders on sys.path, which `python -I` ignores anyway)."""
    prefixes = {sys.prefix, sys.base_prefix, sys.exec_prefix, os.path.dirname(sys.executable)}
    prefixes.add(os.path.dirname(os.path.dirname(os.path.realpath(sys.executable))))
    prefixes = {os.path.realpath(p) for p in prefixes} | prefixes
    paths = set(prefixes)
    for p in sys.path:
        real = os.path.realpath(p) if p else ""
        if real and os.path.isdir(real) and any(real == q or real.startswith(q + "/") for q in prefixes):
            paths.update({p, real})
    return sorted(paths)


def _exposed(hidden: list[str]) -> list[str]:
    """The Python folders under a hidden folder or /tmp (a venv anywhere): bound back read-only."""
    covers = hidden + ["/tmp"]
    inside = [p for p in _python_dirs() if any(p == h or p.startswith(h + "/") for h in covers)]
    inside = [p for p in inside if os.path.isdir(p) and not os.path.islink(p)]
    return _outermost(sorted(set(inside)))


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
    disk_mb: int = DEFAULT_DISK_MB

    def __post_init__(self):
        if self.mode != "auto" and self.mode not in MODES:
            raise TirgrpoError(f"sandbox mode must be auto or one of {MODES}, got {self.mode!r}")
        if not self.timeout_s > 0:
            raise TirgrpoError(f"sandbox timeout must be > 0 seconds, got {self.timeout_s}")
        if self.memory_mb < 64:
            raise TirgrpoError(f"sandbox memory limit must be >= 64 MB, got {self.memory_mb}")
        if self.max_processes < 1:
            raise TirgrpoError(f"sandbox process limit must be >= 1, got {self.max_processes}")
        if self.disk_mb < 1:
            raise TirgrpoError(f"sandbox disk limit must be >= 1 MB, got {self.disk_mb}")

    def resolved_mode(self) -> str:
        """The mode this sandbox runs in; raises SandboxUnavailable when it would be unsafe."""
        mode = self.mode if self.mode != "auto" else best_mode()
        if self.mode == "auto":
            _announce_once()
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
        # With namespaces the working directory is made inside the sandbox, on its private /tmp,
        # and the code arrives on a file descriptor; only rlimits uses a folder of the host.
        private = mode != "rlimits"
        hostdir = None if private else tempfile.mkdtemp(prefix="tirgrpo-sandbox-")
        workdir = f"/tmp/tirgrpo-sandbox-{secrets.token_hex(6)}" if private else hostdir
        # Pipe fds still ours to close. With concurrent executions a stale close could hit
        # another thread's reused fd number, so each fd is closed exactly once.
        open_fds: list[int] = []
        code_file = tempfile.TemporaryFile() if private else None
        try:
            if code_file is not None:
                code_file.write(code.encode("utf-8"))
                code_file.flush()
                code_file.seek(0)
            else:
                Path(workdir, SCRIPT_NAME).write_text(code, encoding="utf-8")
                if uid is not None:
                    for p in (workdir, os.path.join(workdir, SCRIPT_NAME)):
                        os.chown(p, uid, uid)
            status_r, status_w = os.pipe()
            open_fds += [status_r, status_w]
            cfg = self._config(mode, root, uid, workdir, status_w, code_file.fileno() if code_file else None)
            argv = [sys.executable, "-I", "-S", "-c", BOOT, json.dumps(cfg)]
            if mode == "bwrap":
                argv = self._bwrap_argv(cfg, root) + argv
            return self._supervise(argv, cfg, open_fds, mode)
        finally:
            for fd in open_fds:
                os.close(fd)
            if code_file is not None:
                code_file.close()
            if hostdir is not None:
                shutil.rmtree(hostdir, ignore_errors=True)

    def _config(self, mode: str, root: bool, uid: int | None, workdir: str, status_fd: int,
                code_fd: int | None) -> dict:
        """What the bootstrap needs (passed as JSON on its command line)."""
        from tirgrpo.tir.sandbox.seccomp import build_filter

        cpu = max(1, math.ceil(self.timeout_s)) + 1
        nproc = self.max_processes + 2  # + the bootstrap's supervisor and the program itself
        if mode == "rlimits" and uid is None:
            nproc += _count_processes(os.getuid())
        hidden = _hidden_dirs()
        bpf = build_filter()
        return {
            "mode": mode,
            "userns": not root,
            "workdir": workdir,
            "python": sys.executable,
            "script": SCRIPT_NAME,
            "uid": uid,
            "env": _sandbox_env(workdir),
            "status_fd": status_fd,
            "code_fd": code_fd,
            "hide": hidden,
            "expose": _exposed(hidden),
            "disk_bytes": self.disk_mb * 2**20,
            "seccomp": base64.b64encode(bpf).decode() if bpf else "",
            "limits": {"as": self.memory_mb * 2**20, "cpu": cpu, "fsize": self.file_size_mb * 2**20, "nproc": nproc},
        }

    @staticmethod
    def _bwrap_argv(cfg: dict, root: bool) -> list[str]:
        argv = ["bwrap", "--die-with-parent", "--unshare-pid", "--unshare-net", "--unshare-ipc", "--unshare-uts",
                "--unshare-cgroup-try"]
        # As root bwrap keeps its capabilities without a user namespace, which the bootstrap needs
        # to switch to the sandbox uid; otherwise a user namespace gives the isolation.
        if not root:
            argv.append("--unshare-user")
        argv += ["--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc",
                 "--perms", "1777", "--size", str(cfg["disk_bytes"]), "--tmpfs", "/tmp"]
        for d in cfg["hide"]:
            argv += ["--tmpfs", d]
        covers = cfg["hide"] + ["/tmp"]
        for p in cfg["expose"]:
            # Folders bwrap creates on the way are 0700 by default: the sandbox uid must pass.
            hidden_root = next(d for d in covers if p == d or p.startswith(d + "/"))
            parts = Path(p).relative_to(hidden_root).parts
            for i in range(1, len(parts)):
                argv += ["--perms", "0755", "--dir", str(Path(hidden_root, *parts[:i]))]
            argv += ["--ro-bind", p, p]
        for d in cfg["hide"]:
            argv += ["--remount-ro", d]
        argv += ["--clearenv"]
        for k, v in cfg["env"].items():
            argv += ["--setenv", k, v]
        argv.append("--")
        return argv

    def _supervise(self, argv, cfg, open_fds: list[int], mode) -> SandboxResult:
        status_r, status_w = open_fds
        start = time.monotonic()
        proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            pass_fds=tuple(fd for fd in (status_w, cfg["code_fd"]) if fd is not None),
            start_new_session=True, env=cfg["env"], close_fds=True,
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
        return _result(proc.returncode, captures[proc.stdout], captures[proc.stderr], b"".join(status_chunks),
                       killed_by, timed_out, wall, cfg["workdir"], mode)


def _result(returncode: int | None, out: _Capture, err: _Capture, status_bytes: bytes, killed_by: str | None,
            timed_out: bool, wall: float, workdir: str, mode: str) -> SandboxResult:
    """The SandboxResult of one execution from what the supervisor saw (the bootstrap's status
    lines, the captured streams, why it was stopped)."""
    exit_code, status = None, None
    for line in status_bytes.splitlines():
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
    elif killed_by is None and returncode not in (0, None):
        # No status: the bootstrap failed or was killed (e.g. by the program).
        killed_by = f"supervisor exit {returncode}"

    texts = {}
    truncated = False
    for name, capture in (("stdout", out), ("stderr", err)):
        text, cut_bytes = capture.text()
        text, cut_chars = truncate_output(clean_paths(text, workdir))
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


def mode_choice() -> tuple[str, str]:
    """(the mode `auto` picks here, why): the first that works of bwrap, namespaces; else rlimits."""
    env = os.environ.get("TIRGRPO_SANDBOX_MODE")
    if env:
        return env, "set by the environment variable TIRGRPO_SANDBOX_MODE"
    modes = available_modes()
    if "bwrap" in modes:
        return "bwrap", "bubblewrap works here"
    if modes:
        return modes[0], f"bubblewrap does not work here: {probe_errors.get('bwrap', '?')}"
    return "rlimits", (f"no namespaces can be made here (bwrap: {probe_errors.get('bwrap', '?')}; "
                       f"namespaces: {probe_errors.get('namespaces', '?')})")


def best_mode() -> str:
    """The strongest mode that works here ("rlimits" when no namespaces can be made)."""
    return mode_choice()[0]


def describe_choice() -> str:
    """One line: the mode `auto` picks and why, and whether the seccomp filter is on."""
    from tirgrpo.tir.sandbox.seccomp import unavailable_reason

    mode, why = mode_choice()
    missing = unavailable_reason()
    return f"sandbox mode {mode} ({why}); seccomp filter {'off: ' + missing if missing else 'on'}"


_announced: list[bool] = []


def _announce_once() -> None:
    """Say on stderr, once per process, which mode `auto` picked and why."""
    with _probe_lock:
        if _announced:
            return
        _announced.append(True)
    print(f"tirgrpo: {describe_choice()}", file=sys.stderr)
