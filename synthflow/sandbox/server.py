"""The warm fork server. Started once per worker inside bubblewrap (read-only root, private size-capped
/tmp, no network, its own pid namespace). Before it reads any job it forks two clean parents
(``Zygote``): a lean one, and a warm one that has the modules programs commonly import loaded. Every
job's children are forked by one of them; neither ever reads a job.

Protocol on the inherited pipes: 4-byte big-endian length + JSON, one job in, one result out. The
server splits each job: the program's child receives the program and its calls, the driver's child
the tests, each through a pipe of its own after the fork, so no child holds the other side's data,
an earlier job's memory or anything the server read. The server and its clean parents are never
dumpable; every child runs as a uid of its own (as root), with only the file descriptors of its job,
under rlimits, a seccomp allow-list (no fork, exec, socket, ptrace, namespaces, keyring, SysV or
POSIX IPC, io_uring, bpf, perf, prctl; ``kill`` only of itself) and an audit hook; what it sends
back is counted against the output cap, limited in size and depth before it is parsed, and must
carry the job's nonce. The clean parents import as little as they can: a child's fork and exit cost
grows with its parent's memory.

Standard library only, so it starts fast and forks small.
"""

import _ctypes
import _signal as signal
import _socket
import _thread
import ctypes
import errno
import fcntl
import gc
import marshal
import os
import resource
import stat
import struct
import sys
import time

from synthflow.sandbox import harness

# Modules user programs commonly import: loaded in the warm clean parent, so its children find them
# warm. A job that imports only builtin or tiny modules (``policy.LEAN_OK``) runs from the lean parent.
WARM_MODULES = (
    "bisect",
    "collections",
    "copy",
    "datetime",
    "decimal",
    "fractions",
    "functools",
    "hashlib",
    "heapq",
    "itertools",
    "math",
    "operator",
    "random",
    "re",
    "statistics",
    "string",
    "typing",
)

KEEP_BYTES = 64 * 1024  # captured per stream
MAX_BYTES = 4 * 1024 * 1024  # more than this in total (stdout, stderr and results): the program is killed
MAX_RESULT = harness.MAX_FRAME
CLEAN_ENV = {
    "PATH": "/usr/local/bin:/usr/bin:/bin",
    "LANG": "C.UTF-8",
    "PYTHONHASHSEED": "0",
    "HOME": "/nonexistent",
}

BLOCKED_EVENTS = {
    "socket.__new__": "network",
    "socket.connect": "network",
    "socket.bind": "network",
    "socket.getaddrinfo": "network",
    "subprocess.Popen": "subprocess",
    "os.system": "subprocess",
    "os.exec": "subprocess",
    "os.posix_spawn": "subprocess",
    "os.spawn": "subprocess",
    "os.fork": "fork",
    "os.forkpty": "fork",
    "_posixsubprocess.fork_exec": "subprocess",
    "pty.spawn": "subprocess",
    "os.kill": "signal",
    "os.killpg": "signal",
    "ctypes.dlopen": "ctypes",
    "ctypes.dlsym": "ctypes",
    "ctypes.cdata": "ctypes",
    "ctypes.call_function": "ctypes",
}
SIGNAL_NAMES = {4: "SIGILL", 6: "SIGABRT", 7: "SIGBUS", 8: "SIGFPE", 9: "SIGKILL", 11: "SIGSEGV",
                13: "SIGPIPE", 14: "SIGALRM", 15: "SIGTERM", 24: "SIGXCPU", 25: "SIGXFSZ", 31: "SIGSYS"}  # fmt: skip
WRITE_EVENTS = {
    "open",
    "os.remove",
    "os.rename",
    "os.rmdir",
    "os.mkdir",
    "os.chmod",
    "os.chown",
    "os.symlink",
    "os.link",
    "os.truncate",
    "shutil.rmtree",
}


class _suppress:
    """contextlib.suppress without importing contextlib (a clean parent imports as little as it can)."""

    def __init__(self, *exc):
        self.exc = exc

    def __enter__(self):
        return self

    def __exit__(self, kind, value, tb):
        return kind is not None and issubclass(kind, self.exc)


# ---- seccomp: an allow-list, as classic BPF, for the children (x86-64) ------------------------------
# The syscalls a Python program needs once the interpreter is up (collected with strace over the
# HumanEval solutions, threads, hashing, decimal, random, files in the job folder, sleeping and
# timers). Anything else fails with EPERM: sockets, fork/exec, ptrace, namespaces, mounts, the
# kernel keyring (add_key, keyctl), SysV and POSIX IPC, io_uring, bpf, perf, userfaultfd, prctl
# (so a child cannot make itself dumpable) and seccomp itself.
ALLOWED_SYSCALLS = {
    0: "read", 1: "write", 2: "open", 3: "close", 4: "stat", 5: "fstat", 6: "lstat", 7: "poll",
    8: "lseek", 9: "mmap", 10: "mprotect", 11: "munmap", 12: "brk", 13: "rt_sigaction",
    14: "rt_sigprocmask", 15: "rt_sigreturn", 17: "pread64", 18: "pwrite64", 19: "readv", 20: "writev",
    21: "access", 22: "pipe", 23: "select", 24: "sched_yield", 25: "mremap", 26: "msync",
    27: "mincore", 28: "madvise", 32: "dup", 33: "dup2", 34: "pause", 35: "nanosleep", 36: "getitimer",
    37: "alarm", 38: "setitimer", 39: "getpid", 60: "exit", 63: "uname", 72: "fcntl", 74: "fsync",
    75: "fdatasync", 76: "truncate", 77: "ftruncate", 78: "getdents", 79: "getcwd", 80: "chdir",
    81: "fchdir", 82: "rename", 83: "mkdir", 84: "rmdir", 85: "creat", 87: "unlink", 89: "readlink",
    90: "chmod", 91: "fchmod", 95: "umask", 96: "gettimeofday", 97: "getrlimit", 98: "getrusage",
    99: "sysinfo", 100: "times", 102: "getuid", 104: "getgid", 107: "geteuid", 108: "getegid",
    110: "getppid", 111: "getpgrp", 115: "getgroups", 121: "getpgid", 124: "getsid",
    127: "rt_sigpending", 128: "rt_sigtimedwait", 130: "rt_sigsuspend", 131: "sigaltstack",
    137: "statfs", 138: "fstatfs", 140: "getpriority", 143: "sched_getparam",
    145: "sched_getscheduler", 146: "sched_get_priority_max", 147: "sched_get_priority_min",
    186: "gettid", 201: "time", 202: "futex", 204: "sched_getaffinity", 217: "getdents64",
    218: "set_tid_address", 219: "restart_syscall", 221: "fadvise64", 228: "clock_gettime",
    229: "clock_getres", 230: "clock_nanosleep", 231: "exit_group", 257: "openat", 258: "mkdirat",
    262: "newfstatat", 263: "unlinkat", 264: "renameat", 267: "readlinkat", 268: "fchmodat",
    269: "faccessat", 270: "pselect6", 271: "ppoll", 273: "set_robust_list", 274: "get_robust_list",
    280: "utimensat", 285: "fallocate", 292: "dup3", 293: "pipe2", 295: "preadv", 296: "pwritev",
    302: "prlimit64", 309: "getcpu", 315: "sched_getattr", 316: "renameat2", 318: "getrandom",
    332: "statx", 334: "rseq", 436: "close_range", 439: "faccessat2",
}  # fmt: skip
_IOCTLS = (
    0x5401,
    0x5413,
    0x541B,
    0x5421,
    0x5450,
    0x5451,
)  # TCGETS TIOCGWINSZ FIONREAD FIONBIO FIONCLEX FIOCLEX
_X86_64 = os.uname().machine == "x86_64"
_SYS_KILL, _SYS_TGKILL, _SYS_CLONE, _SYS_IOCTL, _SYS_CLONE3 = 62, 234, 56, 16, 435
_PID_MARK = 0x7A11_D00D  # placeholders for the child's pid, patched in after the fork
_GROUP_MARK = 0x7A11_D00E


# what the clean parent itself needs, and a child before its own filter: fork, reap, talk to the
# server over its socket, drop to its uid, set its limits, install its filter. The child's filter
# then denies each of these again.
PARENT_SYSCALLS = {
    46: "sendmsg", 47: "recvmsg", 56: "clone", 57: "fork", 61: "wait4", 62: "kill", 105: "setuid",
    106: "setgid", 112: "setsid", 116: "setgroups", 157: "prctl", 160: "setrlimit", 234: "tgkill",
}  # fmt: skip
CHILD_DENIES = (46, 47, 57, 58, 61, 105, 106, 112, 116, 157, 160, 317)


def _ins(code, jt, jf, k):
    return struct.pack("HBBI", code, jt, jf, k)


_LD, _JEQ, _JGE, _JSET, _RET = 0x20, 0x15, 0x35, 0x45, 0x06
_KILL, _ALLOW = 0x80000000, 0x7FFF0000
_EPERM, _ENOSYS = 0x00050000 | errno.EPERM, 0x00050000 | errno.ENOSYS
_ARG0, _ARG1 = 16, 24  # offsetof(seccomp_data, args[0]) and args[1], low 32 bits


def _base_filter():
    """(bytes, count): the allow-list for a clean parent and everything it forks. Anything not
    x86-64 is killed; ``clone3`` is ENOSYS (libc falls back to clone, whose flags can be read);
    anything not listed is EPERM. Installed once, in each clean parent."""
    prog = [_ins(_LD, 0, 0, 4), _ins(_JEQ, 1, 0, 0xC000003E), _ins(_RET, 0, 0, _KILL), _ins(_LD, 0, 0, 0)]
    prog += [_ins(_JGE, 0, 1, 0x40000000), _ins(_RET, 0, 0, _KILL)]  # x32 syscalls
    for nr in sorted(set(ALLOWED_SYSCALLS) | set(PARENT_SYSCALLS) | {_SYS_IOCTL}):
        prog += [_ins(_JEQ, 0, 1, nr), _ins(_RET, 0, 0, _ALLOW)]
    prog += [_ins(_JEQ, 0, 1, _SYS_CLONE3), _ins(_RET, 0, 0, _ENOSYS)]
    prog += [_ins(_RET, 0, 0, _EPERM)]
    return b"".join(prog), len(prog)


def _child_filter():
    """(pieces, count, slot kinds): the small filter each child adds on top of the parent's, with two
    slots for its pid. It denies what only the parent needed (fork, wait, uid changes, prctl, its
    socket calls), allows ``clone`` only for a thread (CLONE_THREAD), ``kill``/``tgkill`` only of
    itself (its pid, its own group, or 0), and ``ioctl`` only for terminal queries. Short, so a
    child installs it in microseconds (the kernel's cost grows with a filter's length)."""
    prog = [_ins(_LD, 0, 0, 0)]
    for nr in CHILD_DENIES:
        prog += [_ins(_JEQ, 0, 1, nr), _ins(_RET, 0, 0, _EPERM)]
    # clone (56): only with CLONE_THREAD (a thread), not a new process
    prog += [_ins(_JEQ, 0, 4, _SYS_CLONE), _ins(_LD, 0, 0, _ARG0), _ins(_JSET, 0, 1, 0x00010000)]
    prog += [_ins(_RET, 0, 0, _ALLOW), _ins(_RET, 0, 0, _EPERM)]
    # kill (62): itself, its own process group (-pid) or 0 (its group); tgkill (234): its own pid
    prog += [_ins(_LD, 0, 0, 0), _ins(_JEQ, 0, 6, _SYS_KILL), _ins(_LD, 0, 0, _ARG0)]
    prog += [_ins(_JEQ, 3, 0, _PID_MARK), _ins(_JEQ, 2, 0, _GROUP_MARK), _ins(_JEQ, 1, 0, 0)]
    prog += [_ins(_RET, 0, 0, _EPERM), _ins(_RET, 0, 0, _ALLOW)]
    prog += [_ins(_LD, 0, 0, 0), _ins(_JEQ, 0, 4, _SYS_TGKILL), _ins(_LD, 0, 0, _ARG0)]
    prog += [_ins(_JEQ, 1, 0, _PID_MARK), _ins(_RET, 0, 0, _EPERM), _ins(_RET, 0, 0, _ALLOW)]
    # ioctl (16): terminal queries only
    n = len(_IOCTLS)
    prog += [_ins(_LD, 0, 0, 0), _ins(_JEQ, 0, n + 3, _SYS_IOCTL), _ins(_LD, 0, 0, _ARG1)]
    prog += [_ins(_JEQ, n - i, 0, cmd) for i, cmd in enumerate(_IOCTLS)]
    prog += [_ins(_RET, 0, 0, _EPERM), _ins(_RET, 0, 0, _ALLOW)]
    prog += [_ins(_RET, 0, 0, _ALLOW)]  # the parent's filter has decided the rest
    code = b"".join(prog)
    slots = sorted(
        (i * 8 + 4, struct.unpack("HBBI", p)[3] == _GROUP_MARK)
        for i, p in enumerate(prog)
        if struct.unpack("HBBI", p)[3] in (_PID_MARK, _GROUP_MARK)
    )
    pieces, start = [], 0
    for off, _neg in slots:
        pieces.append(code[start:off])
        start = off + 4
    pieces.append(code[start:])
    return pieces, len(prog), [neg for _, neg in slots]


_BASE = _base_filter() if _X86_64 else None
_TEMPLATE = _child_filter() if _X86_64 else None
# a function type, not a handle: prctl is looked up where it is used (the clean parents hold no libc handle)
_PRCTL = ctypes.CFUNCTYPE(
    ctypes.c_int, ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong
)
with _suppress(AttributeError):
    del ctypes.pythonapi  # made at import: a handle to every symbol of the process


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_char_p)]


def seccomp_program(pid):
    """The child filter's bytes for process ``pid`` (its pid patched in), or None."""
    if _TEMPLATE is None:
        return None
    pieces, _count, negs = _TEMPLATE
    own, group = struct.pack("I", pid & 0xFFFFFFFF), struct.pack("I", (-pid) & 0xFFFFFFFF)
    out = [pieces[0]]
    for neg, piece in zip(negs, pieces[1:]):  # noqa: B905 - one more piece than slots
        out += [group if neg else own, piece]
    return b"".join(out)


def _install(code, count):
    fprog = _SockFprog(count, code)
    prctl = _PRCTL(_ctypes.dlsym(_ctypes.dlopen(None, 0), "prctl"))
    try:
        if prctl(38, 1, 0, 0, 0) != 0:  # PR_SET_NO_NEW_PRIVS
            return False
        return prctl(22, 2, ctypes.addressof(fprog), 0, 0) == 0  # PR_SET_SECCOMP, SECCOMP_MODE_FILTER
    finally:
        del prctl, fprog


def install_base_seccomp():
    """The clean parent's allow-list (it and every child it forks)."""
    return _BASE is not None and _install(*_BASE)


def install_seccomp():
    """A child's own filter, on top of its parent's. Returns False when the kernel refuses it.
    prctl is looked up here and dropped; after the filter, prctl and seccomp are denied."""
    code = seccomp_program(os.getpid())
    return code is not None and _install(code, _TEMPLATE[1])


def seccomp_works():
    """Probe in a throwaway child: can both filters be installed here, and do they hold (no fork,
    threads still work)?"""
    pid = os.fork()
    if pid == 0:
        ok = install_base_seccomp() and install_seccomp()
        if ok:
            try:
                os.fork()
                ok = False  # a fork got through
            except OSError:
                pass
        os._exit(0 if ok else 1)
    _, status = os.waitpid(pid, 0)
    return os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0


def _no_dumps():
    """PR_SET_DUMPABLE 0 (no process of a job's uid can read our memory or fds through /proc)."""
    with _suppress(Exception):
        _PRCTL(_ctypes.dlsym(_ctypes.dlopen(None, 0), "prctl"))(4, 0, 0, 0, 0)


# ---- the guard inside each child ----------------------------------------------------------------------
# policy "verify" (programs under verification) also refuses what reaches into the interpreter: a
# program that can walk frames or the heap can rebind the function under test or read the harness
FRAME_ATTRS = frozenset({"tb_frame", "gi_frame", "cr_frame", "ag_frame", "gi_code", "cr_code", "ag_code"})
FUNC_ATTRS = frozenset({"__code__", "__defaults__", "__kwdefaults__", "__globals__", "__closure__"})
INTROSPECTION_EVENTS = frozenset(
    {
        "gc.get_objects",
        "gc.get_referrers",
        "gc.get_referents",
        "sys.settrace",
        "sys.setprofile",
        "sys.addaudithook",
        "code.__new__",
        "function.__new__",
        "marshal.load",
        "pickle.find_class",
    }
)


def _install_guard(workdir, result_fd, nonce, policy="none", entry_points=(), modules=()):
    """Audit hook (cannot be removed from Python code): network, process creation, signals to
    others, ctypes, file descriptors opened by number and writes outside the job's own folder are
    refused and reported. With ``policy="verify"`` also frames, ``gc``, tracing, changing a
    function's code, and source compiled at run time that the static policy refuses. Its tables are
    immutable copies, so a program cannot clear them through the server module. (Defense in depth:
    seccomp, the namespaces and the clean parent hold without it.)"""
    own = os.getpid()
    real_write = os.write
    realpath = os.path.realpath
    fsdecode = os.fsdecode
    prefix = realpath(workdir) + os.sep
    dumps = harness.dump_json
    blocked = dict(BLOCKED_EVENTS)
    writes = frozenset(WRITE_EVENTS)
    strict = policy == "verify"
    intro = INTROSPECTION_EVENTS if strict else frozenset()
    frame_attrs, func_attrs = FRAME_ATTRS, FUNC_ATTRS
    eps = frozenset(entry_points)
    mods = frozenset(modules)
    function_type = type(_install_guard)
    write_flags = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
    busy = [None]
    get_ident = _thread.get_ident
    getframe = sys._getframe
    program_files = frozenset({"<program>", "<string>", "<call>"})

    def deny(kind, detail):
        with _suppress(OSError):
            data = dumps({"nonce": nonce, "violation": kind, "detail": str(detail)[:200]}).encode()
            real_write(result_fd, struct.pack(">I", len(data)) + data)
        raise PermissionError(f"sandbox: {kind} is blocked ({detail})")

    def check_dynamic(source):
        from synthflow.sandbox.policy import check_dynamic as check

        return check(source, eps, mods)

    def from_program():
        """Did the program ask for this compile (not a module's own set-up, such as namedtuple's
        code for a class defined while the standard library imports itself)? The nearest frame of
        the program's code or of an import decides."""
        f = getframe(2)
        while f is not None:
            name = f.f_code.co_filename
            if name in program_files:
                return True
            if name.startswith("<frozen importlib"):
                return False
            f = f.f_back
        return False

    def hook(event, args):
        if busy[0] == get_ident():
            return  # the guard's own work (its frame walk, the policy's import and parse)
        kind = blocked.get(event)
        if kind is None and event.startswith("os.exec"):
            kind = "subprocess"
        if kind is not None:
            if kind == "signal" and args and args[0] in (own, 0):
                return  # signalling itself is harmless
            deny(kind, event)
        if strict:
            if event in intro:
                deny("introspection", event)
            if event == "sys._getframe" or event == "sys._current_frames":
                # the standard library catches ValueError here (namedtuple, typing, enum)
                raise ValueError("sandbox: frames are not available")
            if event == "object.__getattr__" and len(args) > 1 and args[1] in frame_attrs:
                deny("introspection", f"{args[1]}")
            if (
                event == "object.__setattr__"
                and len(args) > 1
                and args[1] in func_attrs
                and type(args[0]) is function_type
                and args[0].__code__.co_filename == "<program>"
            ):
                deny("introspection", f"setting {args[1]}")
            if event == "compile" and args:
                busy[0] = get_ident()
                try:
                    why = check_dynamic(args[0]) if from_program() else ""
                finally:
                    busy[0] = None
                if why:
                    deny("forbidden_construct", f"compiled at run time: {why}")
        if event in writes:
            path = args[0] if args else None
            if event == "open":
                if isinstance(path, int):
                    deny("filesystem", f"open of file descriptor {path}")
                mode = args[1] if len(args) > 1 else "r"
                flags = args[2] if len(args) > 2 else 0
                writing = (isinstance(mode, str) and any(c in mode for c in "wax+")) or (
                    isinstance(flags, int) and flags & write_flags
                )
                if not writing:
                    return
            if isinstance(path, int) or path is None:
                return
            try:
                real = realpath(fsdecode(path))
            except (TypeError, ValueError):
                return
            if not (real + os.sep).startswith(prefix) and real not in ("/dev/null",):
                deny("filesystem", f"{event} {real}")

    sys.addaudithook(hook)


ENTRIES = {
    "calls": lambda job: harness.run_calls(job, 3),  # fds: 1 out, 2 err, 3 result
    "serve": lambda job: harness.serve_calls(job, 4, 5),  # + 4 requests in, 5 responses out
    "driver": lambda job: harness.run_driver(job, 4, 5, 3),  # + 4 requests out, 5 responses in
}


def _read_job(fd):
    head = harness.read_exact(fd, 4)
    if head is None:
        return None
    n = struct.unpack(">I", head)[0]
    body = harness.read_exact(fd, n)
    return None if body is None else marshal.loads(body)  # from the server: trusted


def _spawned(ctl, fds):
    """A child of a clean parent; never returns. ``fds`` = [job pipe, then what becomes 1, 2, 3, ...].
    It reads its own part of the job (the program, or the tests; never both) only now, after the
    fork: the parent never holds a job."""
    res_fd = 3
    nonce = None
    try:
        try:
            os.setsid()
            high = [fcntl.fcntl(fd, fcntl.F_DUPFD, 200 + i) for i, fd in enumerate(fds)]
            job_fd = len(fds)
            for target, fd in enumerate(high[1:], start=1):
                os.dup2(fd, target)
            os.dup2(high[0], job_fd)
            os.close(0)  # stdin closed
            os.closerange(job_fd + 1, 65536)  # nothing of the server, the parent or other jobs stays open
            limits = ctl["limits"]
            mem = limits["mem_bytes"]
            resource.setrlimit(resource.RLIMIT_AS, (mem, mem))
            cpu = int(limits["cpu_s"])
            resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
            resource.setrlimit(resource.RLIMIT_FSIZE, (limits["fsize"], limits["fsize"]))
            resource.setrlimit(resource.RLIMIT_NOFILE, (limits["nofile"], limits["nofile"]))
            resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
            job = _read_job(job_fd)
            os.close(job_fd)
            if not isinstance(job, dict):
                raise ValueError("no job")
            nonce = job.get("nonce")
            ready = harness.prepare(job)  # compiled under the limits, before the guard sees any compile
            workdir = ctl["workdir"]
            uid = ctl.get("uid")
            os.chdir(workdir)  # the environment was scrubbed once, in the clean parent
            if "tempfile" in sys.modules:
                sys.modules["tempfile"].tempdir = workdir
            if uid is not None:
                os.setgroups([])
                os.setgid(uid)
                os.setuid(uid)
            resource.setrlimit(resource.RLIMIT_NPROC, (limits["nproc"], limits["nproc"]))
            if ctl.get("seccomp") and not install_seccomp():
                raise OSError("seccomp filter refused")
            sys.stdin = None
            sys.stdout = open(1, "w", buffering=1, closefd=False)  # noqa: SIM115
            sys.stderr = open(2, "w", buffering=1, closefd=False)  # noqa: SIM115
            entry = ENTRIES[ctl["role"]]
            policy = job.get("policy", "none") if ctl["role"] != "driver" else "none"
            _install_guard(
                workdir, res_fd, nonce, policy, job.get("entry_points") or (), job.get("modules") or ()
            )
        except BaseException as e:  # noqa: BLE001
            with _suppress(BaseException):
                harness.write_frame(res_fd, {"nonce": nonce, "setup_error": repr(e)[:300]})
            os._exit(70)
        entry(ready)
    finally:
        os._exit(70)  # whatever happens, the child never returns into the parent's loop


def _send(sock, obj, fds=()):
    anc = [(_socket.SOL_SOCKET, _socket.SCM_RIGHTS, struct.pack(f"{len(fds)}i", *fds))] if fds else []
    sock.sendmsg([marshal.dumps(obj)], anc)


def _recv(sock, maxfds=0):
    """(message, fds); (None, []) when the other side is gone."""
    fds = []
    msg, anc, _flags, _addr = sock.recvmsg(1 << 16, _socket.CMSG_LEN(maxfds * 4) if maxfds else 0)
    for level, kind, data in anc:
        if level == _socket.SOL_SOCKET and kind == _socket.SCM_RIGHTS:
            n = len(data) // 4
            fds += struct.unpack(f"{n}i", data[: 4 * n])
    if not msg:
        for fd in fds:
            os.close(fd)
        return None, []
    return marshal.loads(msg), fds


class Zygote:
    """A clean parent: forked from the server before the server reads any job, it forks every
    job's children and never reads a job itself. It receives only what is not a secret (role, uid,
    limits, job folder) and the children's file descriptors; each child reads its own part of the
    job from a pipe after the fork. So no child inherits tests, expected values, another job's code
    or results. It reaps the children and reports each exit status as soon as it has it.

    ``warm``: it imports ``WARM_MODULES`` first (programs that import them skip the import cost);
    the lean one imports nothing more, so its children fork and exit faster. With ``use_seccomp`` it
    installs the allow-list on itself before its first fork, and each child adds its own short
    filter."""

    def __init__(self, warm, use_seccomp):
        self.sock, theirs = _socket.socketpair(_socket.AF_UNIX, _socket.SOCK_SEQPACKET)
        self.exited = {}  # exit statuses the clean parent reported, by pid
        self.pid = os.fork()
        if self.pid == 0:
            # nothing of the server stays open here (another clean parent's socket would keep that
            # one alive after the server closed it)
            self.sock.detach()  # closed below with the rest; no object may close a reused number later
            keep = os.dup2(theirs.detach(), 3)
            os.closerange(4, 65536)
            theirs = _socket.socket(fileno=keep)
            try:
                if warm:
                    for name in WARM_MODULES:
                        __import__(name)
                self._loop(theirs, use_seccomp)
            finally:
                os._exit(0)
        theirs.close()

    @staticmethod
    def _loop(sock, use_seccomp=False):
        """Spawn requests in; each child's exit status goes back unasked as soon as it is reaped."""
        import select

        signal.signal(signal.SIGPIPE, signal.SIG_IGN)
        wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        signal.set_wakeup_fd(wake_w)
        signal.signal(signal.SIGCHLD, lambda *_: None)
        # what is alive now is moved out of the collector's sight: a child's collections do not walk
        # (and copy on write) the parent's objects
        os.environ.clear()
        os.environ.update(CLEAN_ENV)
        gc.collect()
        gc.freeze()
        if use_seccomp and not install_base_seccomp():
            return  # the server sees the parent gone and says so
        while True:
            try:
                ready, _, _ = select.select([sock, wake_r], [], [])
            except InterruptedError:
                continue
            if wake_r in ready:
                with _suppress(BlockingIOError):
                    os.read(wake_r, 4096)
                while True:
                    try:
                        pid, status = os.waitpid(-1, os.WNOHANG)
                    except ChildProcessError:
                        break
                    if pid == 0:
                        break
                    _send(sock, {"exited": pid, "status": status})
            if sock not in ready:
                continue
            try:
                req, fds = _recv(sock, 16)
            except (OSError, ValueError, EOFError):
                return
            if req is None:
                return
            pid = os.fork()
            if pid == 0:
                signal.set_wakeup_fd(-1)
                signal.signal(signal.SIGCHLD, signal.SIG_DFL)
                sock.close()
                _spawned(req, fds)
            for fd in fds:
                os.close(fd)
            _send(sock, {"pid": pid})

    def _next(self):
        msg, _ = _recv(self.sock)
        if msg is None:
            raise OSError("the clean parent is gone")
        if "exited" in msg:
            self.exited[msg["exited"]] = msg["status"]
            return None
        return msg

    def spawn(self, role, part, fds, workdir, uid, limits, use_seccomp):
        """Fork a child for one side of a job; ``part`` is what that side may know. The part goes
        into the child's own pipe, never through the clean parent. Returns the child's pid."""
        job_r, job_w = os.pipe()
        ctl = {"role": role, "workdir": workdir, "uid": uid, "limits": limits, "seccomp": use_seccomp}
        try:
            _send(self.sock, ctl, [job_r, *fds])
        finally:
            os.close(job_r)
        data = marshal.dumps(part)
        with _suppress(OSError):  # a child that died before reading: its verdict says so
            with _suppress(OSError):
                fcntl.fcntl(job_w, 1031, min(1 << 20, max(65536, len(data) + 4)))  # F_SETPIPE_SZ
            msg = struct.pack(">I", len(data)) + data
            while msg:
                msg = msg[os.write(job_w, msg) :]
        os.close(job_w)
        reply = None
        while reply is None:
            reply = self._next()
        return int(reply["pid"])

    def wait(self, pid):
        """The exit status of a child (already killed by the caller)."""
        while pid not in self.exited:
            self._next()
        return self.exited.pop(pid)

    def close(self):
        with _suppress(OSError):
            self.sock.close()
        with _suppress(ChildProcessError):
            os.waitpid(self.pid, 0)


# ---- the server's own work (it imports json and select only after its clean parents are forked) ------
json = select = None  # set by _server_imports()


def _server_imports():
    global json, select
    import json as _json_mod
    import select as _select_mod

    json, select = _json_mod, _select_mod


def _leftovers(uid):
    """Processes still owned by the sandbox uid. Cheap: in our pid namespace /proc lists only a few."""
    found = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                if os.stat(f"/proc/{name}").st_uid == uid:
                    found.append(int(name))
            except OSError:
                pass
    return found


def _sweep(uid):
    """Kill every process left with the sandbox uid (escaped grandchildren): a forked helper
    takes that uid and signals everything it can (kill -1)."""
    if not _leftovers(uid):
        return
    pid = os.fork()
    if pid == 0:
        try:
            os.setuid(uid)
            os.kill(-1, signal.SIGKILL)
        except BaseException:  # noqa: BLE001
            pass
        os._exit(0)
    os.waitpid(pid, 0)


def remove_tree(path):
    """Delete a job folder without recursion, however deep or hostile: subfolders are moved up to
    the top folder (two file descriptors at a time) until it is flat. Errors are ignored: one job's
    leftovers never fail the next."""
    with _suppress(OSError):
        top = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
        try:
            n = 0
            for _ in range(1_000_000):  # a bound, not a loop forever
                with os.scandir(top) as it:
                    entries = list(it)
                if not entries:
                    break
                for e in entries:
                    try:
                        if e.is_dir(follow_symlinks=False):
                            with _suppress(OSError):
                                os.chmod(e.name, 0o700, dir_fd=top, follow_symlinks=False)
                            try:
                                os.rmdir(e.name, dir_fd=top)
                                continue
                            except OSError:
                                pass
                            sub = os.open(e.name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=top)
                            try:
                                with os.scandir(sub) as it2:
                                    for c in it2:
                                        n += 1
                                        if c.is_dir(follow_symlinks=False):
                                            with _suppress(OSError):
                                                os.chmod(c.name, 0o700, dir_fd=sub, follow_symlinks=False)
                                            os.rename(c.name, f".up{n}", src_dir_fd=sub, dst_dir_fd=top)
                                        else:
                                            os.unlink(c.name, dir_fd=sub)
                            finally:
                                os.close(sub)
                        else:
                            os.unlink(e.name, dir_fd=top)
                    except OSError:
                        continue
        finally:
            os.close(top)
        os.rmdir(path)


# ---- one job ---------------------------------------------------------------------------------------
def _frames(buf, nonce):
    """Parse the result stream: (final frame or None, violations, problem or '')."""
    final, violations = None, []
    data = bytes(buf)
    pos = 0
    while pos < len(data):
        if len(data) - pos < 4:
            return final, violations, "a truncated result frame"
        n = struct.unpack(">I", data[pos : pos + 4])[0]
        if n > MAX_RESULT or pos + 4 + n > len(data):
            return final, violations, "a malformed result frame"
        try:
            obj = json.loads(data[pos + 4 : pos + 4 + n])
        except (ValueError, RecursionError):
            return final, violations, "a result frame that is not valid JSON"
        pos += 4 + n
        if not isinstance(obj, dict) or obj.get("nonce") != nonce:
            continue  # not from this job's harness: ignored
        if "violation" in obj:
            violations.append(obj)
        elif final is None:
            final = obj
        else:
            return None, violations, "two result frames"
    return final, violations, ""


def _pipes(n):
    out = []
    for _ in range(n):
        r, w = os.pipe()
        out.append((r, w))
    return out


PROGRAM_KEYS = (
    "code",
    "calls",
    "call_fns",
    "per_call_timeout_s",
    "entry_point",
    "entry_points",
    "modules",
    "policy",
)
DRIVER_KEYS = ("tests", "prompt", "program_names", "entry_point")


def _workdir(base_tmp, uid):
    path = os.path.join(base_tmp, "job-" + os.urandom(6).hex())
    os.mkdir(path, 0o700)
    if uid is not None:
        os.chown(path, uid, uid)
    return path


def run_one(job, base_tmp, uids, limits, use_seccomp, zygotes):
    """One job: its children (one, or the program's and the tests' in driver mode), from the lean
    or the warm clean parent, watched until they finish, time out or flood; then the verdict."""
    zygote = zygotes[1 if job.get("warm", True) else 0]
    driver = job.get("mode") == "driver"
    workdir = _workdir(base_tmp, uids[0])
    dwork = None
    t0 = time.perf_counter()
    kids = []  # (pid, uid)
    program = {k: job[k] for k in PROGRAM_KEYS if k in job}
    if not driver:
        program["nonce"] = job["nonce"]
        (out_r, out_w), (err_r, err_w), (res_r, res_w) = _pipes(3)
        try:
            pid = zygote.spawn("calls", program, [out_w, err_w, res_w], workdir, uids[0], limits, use_seccomp)
        finally:
            for fd in (out_w, err_w, res_w):
                os.close(fd)
        kids.append((pid, uids[0]))
        watch = {out_r: "out", err_r: "err", res_r: "res"}
    else:
        # the program's side knows its own nonce, never the driver's; the tests never reach it
        program["nonce"] = os.urandom(16).hex()
        tests = {k: job[k] for k in DRIVER_KEYS if k in job}
        tests.update(nonce=job["nonce"], peer_nonce=program["nonce"])
        (pout_r, pout_w), (perr_r, perr_w), (pres_r, pres_w), (req_r, req_w), (resp_r, resp_w) = _pipes(5)
        (dout_r, dout_w), (derr_r, derr_w), (dres_r, dres_w) = _pipes(3)
        dwork = _workdir(base_tmp, uids[1])
        try:
            pid = zygote.spawn(
                "serve",
                program,
                [pout_w, perr_w, pres_w, req_r, resp_w],
                workdir,
                uids[0],
                limits,
                use_seccomp,
            )
            kids.append((pid, uids[0]))
            pid2 = zygote.spawn(
                "driver", tests, [dout_w, derr_w, dres_w, req_w, resp_r], dwork, uids[1], limits, use_seccomp
            )
            kids.append((pid2, uids[1]))
        finally:
            for fd in (pout_w, perr_w, pres_w, req_r, resp_w, dout_w, derr_w, dres_w, req_w, resp_r):
                os.close(fd)
        watch = {pout_r: "out", perr_r: "err", pres_r: "pres", dout_r: "dout", derr_r: "derr", dres_r: "res"}
    deadline = t0 + float(job.get("timeout_s", 5.0))
    bufs = {k: bytearray() for k in set(watch.values())}
    total = 0
    open_fds = list(watch)
    killed_for = ""
    while open_fds:
        left = deadline - time.perf_counter()
        if left <= 0:
            killed_for = "timeout"
            break
        ready, _, _ = select.select(open_fds, [], [], left)
        for fd in ready:
            chunk = os.read(fd, 65536)
            if not chunk:
                open_fds.remove(fd)
                continue
            total += len(chunk)  # results count toward the cap too
            name = watch[fd]
            limit = MAX_RESULT + 8 if name in ("res", "pres") else KEEP_BYTES
            if len(bufs[name]) < limit:
                bufs[name] += chunk[: limit - len(bufs[name])]
        if total > MAX_BYTES + MAX_RESULT:
            killed_for = "output"
            break
    statuses = []
    for pid, _uid in kids:
        for kill in (os.killpg, os.kill):  # the whole group: threads, children, everything
            with _suppress(ProcessLookupError, PermissionError):
                kill(pid, signal.SIGKILL)
    for pid, _uid in kids:
        statuses.append(zygote.wait(pid))
    if not use_seccomp:  # with seccomp a child cannot fork: nothing can be left
        for uid in {u for _, u in kids}:
            if uid is not None:
                _sweep(uid)
    duration = time.perf_counter() - t0
    for fd in watch:
        os.close(fd)
    remove_tree(workdir)
    if dwork:
        remove_tree(dwork)
    return verdict_from(bufs, statuses, killed_for, duration, job)


def verdict_from(bufs, statuses, killed_for, duration, job):
    nonce = job["nonce"]
    final, violations, problem = _frames(bufs.get("res", b""), nonce)
    if "pres" in bufs:  # the program's own side only reports violations
        _, pviol, _ = _frames(bufs["pres"], nonce)
        violations += pviol
    out = bytes(bufs.get("out", b"")).decode("utf-8", "replace")
    err = bytes(bufs.get("err", b"")).decode("utf-8", "replace")
    if "dout" in bufs:
        err += bytes(bufs.get("derr", b"")).decode("utf-8", "replace")
    v = {
        "status": "error",
        "exc_type": "",
        "message": "",
        "duration_s": duration,
        "stdout": out,
        "stderr": err,
    }
    status = statuses[-1]  # the decider: the only child, or the driver
    if killed_for == "timeout":
        v.update(status="timeout", message=f"wall clock limit {job.get('timeout_s')} s")
    elif killed_for == "output":
        v.update(status="killed", message=f"output limit {MAX_BYTES} bytes exceeded")
    elif problem:
        v.update(status="error", exc_type="MalformedResult", message=problem)
    elif final is not None and "setup_error" in final:
        v.update(status="error", exc_type="SandboxSetup", message=final["setup_error"])
    elif final is not None:
        v.update(status="done", frame=final)
    elif os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        name = SIGNAL_NAMES.get(sig, str(sig))
        v.update(status="timeout" if sig == signal.SIGXCPU else "killed", message=f"terminated by {name}")
    else:
        code = os.WEXITSTATUS(status) if os.WIFEXITED(status) else -1
        v.update(status="error", exc_type="EarlyExit", message=f"exited with code {code} before reporting")
    if violations:
        v.update(
            status="blocked",
            exc_type="SandboxViolation",
            message="; ".join(f"{x.get('violation')}: {x.get('detail')}" for x in violations[:3]),
        )
        v.pop("frame", None)
    return v


def main():
    # protocol pipes move off fds 0/1 so children cannot inherit them by accident
    cmd_fd = os.dup(0)
    out_fd = os.dup(1)
    null = os.open(os.devnull, os.O_RDWR)
    os.dup2(null, 0)
    os.dup2(null, 1)
    os.set_inheritable(cmd_fd, False)
    os.set_inheritable(out_fd, False)
    _no_dumps()
    sys.dont_write_bytecode = True  # the root is read-only: a child's late import must not try to write
    cfg = marshal.loads(bytes.fromhex(sys.argv[1]))
    uids = (cfg.get("uid"), cfg.get("driver_uid"))
    use_seccomp = bool(cfg.get("seccomp")) and seccomp_works()
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)
    # the clean parents are forked now, before this process has read a single job
    zygotes = (Zygote(False, use_seccomp), Zygote(True, use_seccomp))
    _server_imports()
    import tempfile

    base_tmp = tempfile.mkdtemp(prefix="synthflow-sandbox-")
    os.chmod(base_tmp, stat.S_IRWXU | stat.S_IXGRP | stat.S_IXOTH)
    hello = {
        "ready": True,
        "pid": os.getpid(),
        "uid": uids[0],
        "mode": cfg.get("mode"),
        "seccomp": use_seccomp,
    }
    _write(out_fd, hello)
    while True:
        try:
            job = _read(cmd_fd)
        except (ValueError, RecursionError):
            job = None
        if not isinstance(job, dict):
            break
        limits = {
            "mem_bytes": int(job.get("mem_mb", 1024)) << 20,
            "cpu_s": max(1, int(float(job.get("timeout_s", 5.0)) + 1)),
            "fsize": 16 << 20,
            "nofile": 64,
            "nproc": int(job.get("nproc", 64)),
        }
        try:
            v = run_one(job, base_tmp, uids, limits, use_seccomp, zygotes)
        except Exception as e:  # noqa: BLE001 - the server itself must not die on a bad job
            v = {"status": "error", "exc_type": "SandboxError", "message": repr(e)[:300], "duration_s": 0.0}
            if isinstance(e, OSError) and "clean parent" in str(e):
                _write(out_fd, {**v, "nonce": job.get("nonce")})
                break  # the host starts a new server
        v["nonce"] = job.get("nonce")
        _write(out_fd, v)
    for z in zygotes:
        z.close()
    remove_tree(base_tmp)


def _write(fd, obj):
    data = json.dumps(obj).encode()
    msg = struct.pack(">I", len(data)) + data
    while msg:
        msg = msg[os.write(fd, msg) :]


def _read(fd):
    head = harness.read_exact(fd, 4)
    if head is None:
        return None
    n = struct.unpack(">I", head)[0]
    body = harness.read_exact(fd, n)
    return None if body is None else json.loads(body)


if __name__ == "__main__":
    main()
