"""A seccomp filter for sandboxed code: system calls that model code never needs return EPERM.

The filter is compiled on the host, once, with libseccomp (through its Python bindings,
`pyseccomp`) into a classic BPF program; the bootstrap inside the sandbox installs those bytes
with `prctl(PR_SET_SECCOMP)` just before it execs the program, so nothing has to be importable
inside the sandbox. Everything not listed is allowed (a deny list: Python, numpy and sympy use
a wide and changing set of calls, and the namespaces and limits already contain the rest).

Refused (EPERM): new namespaces (`unshare`, `setns`, `clone`/`clone3` with a CLONE_NEW* flag),
mounts of any kind, `chroot`/`pivot_root`, `ptrace` and cross-process memory access, kernel
modules and kexec, BPF, perf events, userfaultfd, the kernel keyring, swap, reboot, host and
domain names, accounting and quotas, file handles (`open_by_handle_at`), raw I/O ports.

Where libseccomp's shared library (Debian: libseccomp2) or pyseccomp is missing, `build_filter`
returns None with the reason in `unavailable_reason()`, and the sandbox runs without a filter
and says so (`tirgrpo sandbox modes`).
"""

from __future__ import annotations

import errno
import functools
import platform
import tempfile

CLONE_NEW_FLAGS = (0x00020000 | 0x04000000 | 0x08000000 | 0x10000000 | 0x20000000 | 0x40000000
                   | 0x02000000 | 0x00000080)  # NEWNS UTS IPC USER PID NET CGROUP TIME

DENIED = (
    "unshare", "setns", "mount", "umount2", "pivot_root", "chroot", "mount_setattr", "move_mount",
    "open_tree", "fsopen", "fsconfig", "fsmount", "fspick",
    "ptrace", "process_vm_readv", "process_vm_writev", "kcmp", "pidfd_getfd",
    "init_module", "finit_module", "delete_module", "kexec_load", "kexec_file_load",
    "bpf", "perf_event_open", "userfaultfd", "keyctl", "add_key", "request_key",
    "swapon", "swapoff", "reboot", "sethostname", "setdomainname", "acct", "quotactl",
    "open_by_handle_at", "name_to_handle_at", "iopl", "ioperm", "lookup_dcookie", "syslog",
    "settimeofday", "clock_settime", "clock_adjtime", "adjtimex",
)

_reason: list[str] = []


def unavailable_reason() -> str | None:
    """Why no filter can be built here (None when `build_filter` works)."""
    build_filter()
    return _reason[0] if _reason else None


@functools.lru_cache(maxsize=1)
def build_filter() -> bytes | None:
    """The BPF program (bytes of `struct sock_filter[]`) for this machine's architecture, or None."""
    try:
        import pyseccomp as sc
    except ImportError as e:
        _reason.append(f"pyseccomp is not installed ({e}): pip install pyseccomp")
        return None
    except OSError as e:  # pyseccomp loads libseccomp.so.2 when imported
        _reason.append(f"libseccomp's shared library cannot be loaded ({e}): apt-get install libseccomp2")
        return None
    try:
        f = sc.SyscallFilter(sc.ALLOW)
        deny = sc.ERRNO(errno.EPERM)
        for name in DENIED:
            try:
                f.add_rule(deny, name)
            except Exception:  # a call this architecture does not have (iopl on arm64, ...)
                continue
        # clone's flags are its first argument on x86-64 (and most others): refuse new namespaces.
        for flag in _bits(CLONE_NEW_FLAGS):
            f.add_rule(deny, "clone", sc.Arg(0, sc.MASKED_EQ, flag, flag))
        # clone3 passes its flags in a struct BPF cannot read: ENOSYS makes libc fall back to clone.
        f.add_rule(sc.ERRNO(errno.ENOSYS), "clone3")
        with tempfile.TemporaryFile() as out:
            f.export_bpf(out)
            out.seek(0)
            program = out.read()
    except Exception as e:  # libseccomp refused: an old version, an unknown architecture
        _reason.append(f"libseccomp could not build the filter on {platform.machine()}: {e}")
        return None
    if not program or len(program) % 8:
        _reason.append(f"libseccomp exported {len(program)} bytes, not a BPF program")
        return None
    return program


def _bits(mask: int) -> list[int]:
    return [1 << i for i in range(mask.bit_length()) if mask >> i & 1]
