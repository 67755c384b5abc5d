"""Run model-written Python safely: one fresh, contained process per execution.

Every execution gets a new temporary working directory, its own process group, a wall-clock
timeout, CPU / address-space / file-size / process-count limits, no network, a scrubbed
environment, a seccomp filter (seccomp.py), and incrementally read, truncated output; the whole
process group (and, where namespaces are available, the whole PID namespace) is killed when it
ends. With namespaces, /tmp and the working directory are a private size-capped tmpfs, and home
folders, the project tree and the host's temporary folders are hidden.

Three modes, chosen automatically (the first that works here) or with `mode=`:

- `bwrap`: bubblewrap (Debian package `bubblewrap`, 0.7+) builds the namespaces and the
  read-only file system view; our bootstrap then applies the limits inside it.
- `namespaces`: the same with the kernel directly (`unshare` of user/mount/network/PID/IPC/UTS
  namespaces and a read-only remount of every mount), no extra package.
- `rlimits`: no namespaces can be created (e.g. a container without privileges): only the
  resource limits hold, and there is *no network isolation*, so it is refused unless the caller
  passes `allow_unsandboxed_network=True`.

Which guarantees hold in each mode is written down in docs/security.md. As root, the code runs
under a fresh, unused uid per execution: the kernel exempts uid 0 from RLIMIT_NPROC, so only a
non-root uid makes the process limit (fork bombs) real.

Modules: `runner` (the host side: `Sandbox`, mode choice), `boot` (`BOOT`, the bootstrap),
`seccomp` (the filter), `output` (`SandboxResult`, truncation), `hostile` (the self test).
The bootstrap (`BOOT`) is a stdlib-only script that runs in the child before the user's code;
it is a string, not a module, because it runs under `python -I -S` where the package may not
be importable.
"""

from tirgrpo.tir.sandbox.output import DEFAULT_MAX_OUTPUT_BYTES, SandboxResult, truncate_output
from tirgrpo.tir.sandbox.runner import (DEFAULT_DISK_MB, DEFAULT_FILE_SIZE_MB, DEFAULT_MAX_PROCESSES,
                                        DEFAULT_MEMORY_MB, DEFAULT_TIMEOUT_S, MODES, Sandbox, SandboxUnavailable,
                                        available_modes, best_mode, describe_choice, mode_choice, probe_errors)
from tirgrpo.tir.sandbox.hostile import HostileCase, hostile_cases, selftest

__all__ = ["DEFAULT_DISK_MB", "DEFAULT_FILE_SIZE_MB", "describe_choice", "mode_choice", "DEFAULT_MAX_OUTPUT_BYTES", "DEFAULT_MAX_PROCESSES", "DEFAULT_MEMORY_MB",
           "DEFAULT_TIMEOUT_S", "MODES", "HostileCase", "Sandbox", "SandboxResult", "SandboxUnavailable",
           "available_modes", "best_mode", "hostile_cases", "probe_errors", "selftest", "truncate_output"]
