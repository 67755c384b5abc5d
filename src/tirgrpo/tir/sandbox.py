"""Run model-written Python safely: one fresh, contained process per execution.

Every execution gets a new temporary working directory, its own process group, a wall-clock
timeout, CPU / address-space / file-size / process-count limits, no network, a scrubbed
environment, and incrementally read, truncated output; the whole process group (and, where
namespaces are available, the whole PID namespace) is killed when it ends.

Three modes, chosen automatically (the first that works here) or with `mode=`:

- `bwrap`: bubblewrap (Debian package `bubblewrap`) builds the namespaces and the read-only
  file system view; our bootstrap then applies the limits inside it.
- `namespaces`: the same with the kernel directly (`unshare` of user/mount/network/PID/IPC/UTS
  namespaces and a read-only remount of every mount), no extra package.
- `rlimits`: no namespaces can be created (e.g. a container without privileges): only the
  resource limits hold, and there is *no network isolation*, so it is refused unless the caller
  passes `allow_unsandboxed_network=True`.

Which guarantees hold in each mode is written down in docs/security.md. As root, the code runs
under a fresh, unused uid per execution: the kernel exempts uid 0 from RLIMIT_NPROC, so only a
non-root uid makes the process limit (fork bombs) real.

The bootstrap (`_BOOT`) is a stdlib-only script that runs in the child before the user's code;
it is a string, not a module, because it runs under `python -I -S` where the package may not
be importable.
"""

from __future__ import annotations

import argparse
import dataclasses
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

MODES = ("bwrap", "namespaces", "rlimits")

DEFAULT_TIMEOUT_S = 5.0
DEFAULT_MEMORY_MB = 2048
DEFAULT_MAX_PROCESSES = 32
DEFAULT_FILE_SIZE_MB = 64
# Output beyond this (stdout + stderr) is not read: the run is killed. Far above what is shown
# (4,000 characters) but high enough that a program printing a big table is not cut short.
DEFAULT_MAX_OUTPUT_BYTES = 16 * 1024 * 1024

# The original harness's truncation: long outputs keep their first and last 2,000 characters,
# lines over 1,000 characters keep their first and last 100.
HEAD_CHARS = TAIL_CHARS = 2000
MAX_LINE_CHARS = 1000
LINE_KEEP_CHARS = 100
# Raw bytes kept per stream before truncation: enough for HEAD/TAIL_CHARS of any UTF-8 text.
_KEEP_BYTES = 64 * 1024

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


@dataclass
class SandboxResult:
    """What one execution did. `stdout`/`stderr` are truncated and cleaned of temp paths.

    exit_code: the program's exit status, -N if signal N killed it, None if we killed it
        (timeout, output limit) or it could not be known.
    killed_by: None when the program ended on its own; else what stopped it: "timeout",
        "output" (output limit), "cpu" (CPU-time limit), "memory" (address-space limit),
        "file-size", or "signal SIGxxx".
    """

    ok: bool
    exit_code: int | None
    stdout: str
    stderr: str
    timed_out: bool
    killed_by: str | None
    truncated: bool
    wall_s: float
    mode: str

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def output(self) -> str:
        """The text a TIR bridge shows: stdout, then stderr, then a note on why it stopped."""
        parts = [p.rstrip("\n") for p in (self.stdout, self.stderr) if p.strip()]
        if self.timed_out:
            parts.append(f"TimeoutError: execution stopped after the time limit ({self.wall_s:.0f} s)")
        elif self.killed_by in ("output", "cpu", "file-size") or (self.killed_by or "").startswith("signal"):
            parts.append(f"Execution stopped: {self.killed_by} limit" if "signal" not in self.killed_by
                         else f"Execution stopped: killed by {self.killed_by[7:]}")
        return "\n".join(parts)


# ----------------------------------------------------------------------------- output handling


def truncate_output(text: str) -> tuple[str, bool]:
    """(text with long lines and long outputs cut as the original did, whether anything was cut)."""
    cut = False
    lines = text.split("\n")
    for i, line in enumerate(lines):
        if len(line) > MAX_LINE_CHARS:
            omitted = len(line) - 2 * LINE_KEEP_CHARS
            lines[i] = f"{line[:LINE_KEEP_CHARS]}... [{omitted} characters omitted] ...{line[-LINE_KEEP_CHARS:]}"
            cut = True
    text = "\n".join(lines)
    if len(text) > HEAD_CHARS + TAIL_CHARS:
        omitted = len(text) - HEAD_CHARS - TAIL_CHARS
        text = f"{text[:HEAD_CHARS]}\n... [{omitted} characters omitted] ...\n{text[-TAIL_CHARS:]}"
        cut = True
    return text, cut


class _Capture:
    """Keeps the first and last _KEEP_BYTES of a stream and counts the rest."""

    def __init__(self):
        self.head = bytearray()
        self.tail = bytearray()
        self.total = 0

    def add(self, data: bytes) -> None:
        self.total += len(data)
        room = _KEEP_BYTES - len(self.head)
        if room > 0:
            self.head += data[:room]
            data = data[room:]
        if data:
            self.tail += data
            if len(self.tail) > _KEEP_BYTES:
                del self.tail[: len(self.tail) - _KEEP_BYTES]

    def text(self) -> tuple[str, bool]:
        dropped = self.total - len(self.head) - len(self.tail)
        head = self.head.decode("utf-8", errors="replace")
        if dropped <= 0:
            return (head + self.tail.decode("utf-8", errors="replace")), False
        tail = self.tail.decode("utf-8", errors="replace")
        return f"{head}\n... [{dropped} bytes omitted] ...\n{tail}", True


def clean_paths(text: str, workdir: str) -> str:
    """Remove the temporary working directory from tracebacks and messages ("main.py", ".")."""
    return text.replace(workdir + "/", "").replace(workdir, ".")


# ----------------------------------------------------------------------------- the bootstrap

# Runs as `python -I -S -c _BOOT CONFIG_JSON`, inside bwrap or directly. Stdlib only.
# Stages: (namespaces mode) unshare + file system view; fork the supervisor (PID 1 of the new
# PID namespace where there is one); it forks the program, which drops to the sandbox uid, sets
# the rlimits and execs Python on main.py. The supervisor reaps every child, and when the program
# ends it reports the wait status on the status pipe and exits, which (PID 1) kills whatever the
# program left running.
_BOOT = r'''
import ctypes, json, os, resource, signal, sys
cfg = json.loads(sys.argv[1])
libc = ctypes.CDLL(None, use_errno=True)
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_REMOUNT, MS_NOATIME, MS_NODIRATIME, MS_BIND = 32, 1024, 2048, 4096
MS_REC, MS_PRIVATE, MS_RELATIME, MS_STRICTATIME = 16384, 1 << 18, 1 << 21, 1 << 24
CLONE_NEWNS, CLONE_NEWUTS, CLONE_NEWIPC = 0x00020000, 0x04000000, 0x08000000
CLONE_NEWUSER, CLONE_NEWPID, CLONE_NEWNET = 0x10000000, 0x20000000, 0x40000000
OPT_FLAGS = {"nosuid": MS_NOSUID, "nodev": MS_NODEV, "noexec": MS_NOEXEC, "noatime": MS_NOATIME,
             "nodiratime": MS_NODIRATIME, "relatime": MS_RELATIME}
status_fd = cfg["status_fd"]

def report(obj):  # one JSON line on the status pipe, which the program never holds
    os.write(status_fd, (json.dumps(obj) + "\n").encode())

def fail(msg):
    report({"setup_error": msg})
    os._exit(125)

def mount(src, target, fstype, flags, data=None):
    enc = lambda s: s.encode() if s is not None else None
    if libc.mount(enc(src), enc(target), enc(fstype), ctypes.c_ulong(flags), enc(data)) != 0:
        e = ctypes.get_errno()
        raise OSError(e, "mount %s: %s" % (target, os.strerror(e)))

def unescape(p):
    return p.replace("\\040", " ").replace("\\011", "\t").replace("\\012", "\n").replace("\\134", "\\")

def isolate():
    uid, gid = os.getuid(), os.getgid()
    flags = CLONE_NEWNS | CLONE_NEWNET | CLONE_NEWPID | CLONE_NEWIPC | CLONE_NEWUTS
    if cfg["userns"]:
        flags |= CLONE_NEWUSER
    if libc.unshare(flags) != 0:  # os.unshare needs Python 3.12
        e = ctypes.get_errno()
        raise OSError(e, "unshare: " + os.strerror(e))
    if cfg["userns"]:
        for name, text in (("setgroups", "deny"), ("uid_map", "%d %d 1" % (uid, uid)), ("gid_map", "%d %d 1" % (gid, gid))):
            with open("/proc/self/" + name, "w") as f:
                f.write(text)
    mount(None, "/", None, MS_REC | MS_PRIVATE)
    # Open what must stay visible before home folders are hidden, then bind it back from the fd.
    keep = [(p, os.open(p, os.O_PATH)) for p in cfg["expose"]]
    wd_fd = os.open(cfg["workdir"], os.O_PATH)
    for d in cfg["hide"]:
        mount("tmpfs", d, "tmpfs", MS_NOSUID | MS_NODEV, "mode=755,size=1m")
    os.umask(0o022)
    for p, fd in keep:
        os.makedirs(p, mode=0o755, exist_ok=True)
        mount("/proc/self/fd/%d" % fd, p, None, MS_BIND | MS_REC)
    os.makedirs(cfg["workdir"], exist_ok=True)
    mount("/proc/self/fd/%d" % wd_fd, cfg["workdir"], None, MS_BIND)
    # Everything but the working directory becomes read-only. Locked flags (nosuid, ...) must
    # be repeated or the kernel refuses the remount.
    with open("/proc/self/mountinfo") as f:
        mounts = [line.split() for line in f]
    for fields in mounts:
        point, opts = unescape(fields[4]), fields[5].split(",")
        if point == cfg["workdir"] or point.startswith("/proc") and point != "/proc":
            continue
        flags = MS_BIND | MS_REMOUNT | MS_RDONLY
        for o in opts:
            flags |= OPT_FLAGS.get(o, 0)
        try:
            mount(None, point, None, flags)
        except OSError:
            if point == "/":
                raise
            # Hidden or pseudo file systems (sysfs, cgroup, ...) that refuse: not writable by
            # the sandbox uid anyway.

def set_limits():
    lim = cfg["limits"]
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    resource.setrlimit(resource.RLIMIT_AS, (lim["as"], lim["as"]))
    resource.setrlimit(resource.RLIMIT_CPU, (lim["cpu"], lim["cpu"] + 1))
    resource.setrlimit(resource.RLIMIT_FSIZE, (lim["fsize"], lim["fsize"]))
    resource.setrlimit(resource.RLIMIT_NPROC, (lim["nproc"], lim["nproc"]))

def run_program():
    os.set_inheritable(status_fd, False)  # closed by the exec, open until then for setup errors
    if cfg["uid"] is not None:
        os.setgroups([])
        os.setgid(cfg["uid"])
        os.setuid(cfg["uid"])
    os.chdir(cfg["workdir"])
    set_limits()
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    os.execve(cfg["python"], [cfg["python"], "-I", "-B", cfg["script"]], cfg["env"])

def supervise(pid1):
    if pid1:
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG: die with the bootstrap
        try:
            mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
        except OSError:
            pass  # /proc keeps showing the host's processes (documented)
    try:
        child = os.fork()
    except OSError as e:
        fail("fork: %s" % e)
    if child == 0:
        try:
            run_program()
        except BaseException as e:
            report({"setup_error": str(e)})
        os._exit(125)
    while True:  # reap everything; stop when the program itself has ended
        try:
            pid, status = os.wait()
        except ChildProcessError:
            break
        if pid == child:
            report({"status": status})
            break
    os._exit(0)

try:
    if cfg["mode"] == "namespaces":
        isolate()
except BaseException as e:
    fail(str(e))
if cfg["mode"] == "namespaces":
    pid = os.fork()  # the first child after unshare(CLONE_NEWPID) is PID 1 of the namespace
    if pid == 0:
        supervise(True)
    _, status = os.waitpid(pid, 0)
    os._exit(0)
supervise(False)
'''


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
            raise SandboxUnavailable(f"sandbox mode {mode!r} does not work on this machine: {_probe_errors.get(mode, '')}")
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
            argv = [sys.executable, "-I", "-S", "-c", _BOOT, json.dumps(cfg)]
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
_probe_errors: dict[str, str] = {}


def available_modes() -> list[str]:
    """The isolating modes that work on this machine (probed once: each runs `print('ok')`)."""
    global _probed
    with _probe_lock:
        if _probed is None:
            found = []
            for mode in ("bwrap", "namespaces"):
                if mode == "bwrap" and shutil.which("bwrap") is None:
                    _probe_errors[mode] = "bwrap is not installed (Debian/Ubuntu: apt-get install bubblewrap)"
                    continue
                try:
                    r = Sandbox(timeout_s=20)._run("print('ok')", mode)
                except (OSError, TirgrpoError) as e:
                    r = None
                    _probe_errors[mode] = str(e)
                if r is not None and r.ok and r.stdout.strip() == "ok":
                    found.append(mode)
                elif r is not None:
                    _probe_errors[mode] = (r.stderr.strip() or f"exit {r.exit_code}")[-300:]
            _probed = found
        return list(_probed)


def best_mode() -> str:
    """The strongest mode that works here ("rlimits" when no namespaces can be made)."""
    env = os.environ.get("TIRGRPO_SANDBOX_MODE")
    if env:
        return env
    modes = available_modes()
    return modes[0] if modes else "rlimits"


# ----------------------------------------------------------------------------- hostile-code self test


@dataclass
class HostileCase:
    name: str
    tried: str
    code: str


def hostile_cases(ctx: dict) -> list[HostileCase]:
    """The hostile programs of the self test. `ctx` fills in host-side facts (paths, ports, pids)."""
    return [
        HostileCase("infinite loop", "spin forever", "while True:\n    pass\n"),
        HostileCase("fork bomb", "fork without end",
                    "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n"),
        # One 8 GB block: filling smaller blocks first takes seconds on a busy machine, and the
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
    if case.name in ("error traceback", "syntax error"):
        expected = "NameError" if case.name == "error traceback" else "SyntaxError"
        clean = "tirgrpo-sandbox-" not in r.stderr and tempfile.gettempdir() + "/" not in r.stderr
        return expected in r.stderr and clean and 'File "main.py"' in r.stderr, "traceback shows main.py, no temp path"
    raise AssertionError(case.name)


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
        "max_processes": sandbox.max_processes,
    }
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


# ----------------------------------------------------------------------------- CLI


def add_sandbox_options(p: argparse.ArgumentParser) -> None:
    """The sandbox options shared by `sandbox run` and `generate`."""
    p.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_S, help="wall-clock limit per execution, seconds (default 5)")
    p.add_argument("--memory-mb", type=int, default=DEFAULT_MEMORY_MB, help="address-space limit, MB (default 2048)")
    p.add_argument("--max-processes", type=int, default=DEFAULT_MAX_PROCESSES, help="processes the code may start (default 32)")
    p.add_argument("--sandbox-mode", choices=("auto",) + MODES, default="auto", help="isolation mode (default: best available)")
    p.add_argument("--allow-unsandboxed-network", action="store_true",
                   help="run code even where no network namespace can be made (see docs/security.md)")


def sandbox_from_args(args) -> Sandbox:
    return Sandbox(timeout_s=args.timeout, memory_mb=args.memory_mb, max_processes=args.max_processes,
                   mode=args.sandbox_mode, allow_unsandboxed_network=args.allow_unsandboxed_network)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="sandbox_command", metavar="ACTION", required=True)
    run_p = sub.add_parser("run", help="run one Python file in the sandbox and print the result as JSON")
    run_p.add_argument("file", help="the Python file to run")
    add_sandbox_options(run_p)
    test_p = sub.add_parser("selftest", help="run the hostile-code suite and print what stopped each case")
    add_sandbox_options(test_p)
    sub.add_parser("modes", help="print which isolation modes work on this machine")


def run(args) -> int:
    if args.sandbox_command == "modes":
        modes = available_modes()
        for mode in ("bwrap", "namespaces"):
            print(f"{mode:<11} {'works' if mode in modes else 'unavailable: ' + _probe_errors.get(mode, '')}")
        print(f"{'rlimits':<11} limits only, no network or file-system isolation: needs --allow-unsandboxed-network")
        print(f"default: {best_mode()}")
        return 0
    sandbox = sandbox_from_args(args)
    if args.sandbox_command == "selftest":
        _, failed, _ = selftest(sandbox)
        return 1 if failed else 0
    path = Path(args.file)
    try:
        code = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise TirgrpoError(f"cannot read {path}: {e}") from None
    result = sandbox.run(code)
    print(json.dumps(result.to_dict(), ensure_ascii=False, indent=2))
    return 0 if result.ok else 1
