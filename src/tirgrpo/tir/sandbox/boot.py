"""The bootstrap that runs inside the sandbox before the user's code (stdlib only).

It is a string, not a module, because it runs under `python -I -S` where the package may not be
importable.
"""


# Runs as `python -I -S -c _BOOT CONFIG_JSON`, inside bwrap or directly. Stdlib only.
# Stages: (namespaces mode) unshare + file system view; fork the supervisor (PID 1 of the new
# PID namespace where there is one); it forks the program, which drops to the sandbox uid, sets
# the rlimits and execs Python on main.py. The supervisor reaps every child, and when the program
# ends it reports the wait status on the status pipe and exits, which (PID 1) kills whatever the
# program left running.
BOOT = r'''
import base64, ctypes, json, os, resource, signal, sys
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
    # Open what must stay visible before home folders, the project and /tmp are hidden, then
    # bind it back from the fd.
    keep = [(p, os.open(p, os.O_PATH)) for p in cfg["expose"]]
    for d in cfg["hide"]:
        mount("tmpfs", d, "tmpfs", MS_NOSUID | MS_NODEV, "mode=755,size=1m")
    # The private, size-capped /tmp that also holds the working directory.
    mount("tmpfs", "/tmp", "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777,size=%d" % cfg["disk_bytes"])
    os.umask(0o022)
    for p, fd in keep:
        os.makedirs(p, mode=0o755, exist_ok=True)
        mount("/proc/self/fd/%d" % fd, p, None, MS_BIND | MS_REC)
    # Everything but /tmp becomes read-only. Locked flags (nosuid, ...) must be repeated or the
    # kernel refuses the remount.
    with open("/proc/self/mountinfo") as f:
        mounts = [line.split() for line in f]
    for fields in mounts:
        point, opts = unescape(fields[4]), fields[5].split(",")
        if point == "/tmp" or point.startswith("/proc") and point != "/proc":
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

def make_workdir():
    # The code comes on a file descriptor: the host's temporary folders are not visible here.
    os.makedirs(cfg["workdir"], mode=0o700)
    chunks = []
    while True:
        data = os.read(cfg["code_fd"], 1 << 20)
        if not data:
            break
        chunks.append(data)
    os.close(cfg["code_fd"])
    path = os.path.join(cfg["workdir"], cfg["script"])
    with open(path, "wb") as f:
        f.write(b"".join(chunks))
    if cfg["uid"] is not None:
        for p in (cfg["workdir"], path):
            os.chown(p, cfg["uid"], cfg["uid"])

def install_filter():
    if libc.prctl(38, ctypes.c_ulong(1), ctypes.c_ulong(0), ctypes.c_ulong(0), ctypes.c_ulong(0)) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_NO_NEW_PRIVS)")
    if not cfg["seccomp"]:
        return
    data = base64.b64decode(cfg["seccomp"])
    buf = ctypes.create_string_buffer(data, len(data))
    class Prog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]
    prog = Prog(len(data) // 8, ctypes.cast(buf, ctypes.c_void_p))
    if libc.prctl(22, ctypes.c_ulong(2), ctypes.byref(prog), ctypes.c_ulong(0), ctypes.c_ulong(0)) != 0:
        e = ctypes.get_errno()
        raise OSError(e, "prctl(PR_SET_SECCOMP): " + os.strerror(e))

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
    install_filter()  # last: the filter also refuses what the steps above needed
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
    if cfg["code_fd"] is not None:
        make_workdir()
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


