"""seccomp for the sandbox's clean parents and their children (x86-64): an allow-list installed once
in each clean parent, and a short per-child filter on top of it, as classic BPF built here. Standard
library only (``ctypes`` for prctl), imported by the fork server before it forks its clean parents."""

import _ctypes
import ctypes
import errno
import os
import struct

from synthflow.sandbox.wire import suppress

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
with suppress(AttributeError):
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


def no_dumps():
    """PR_SET_DUMPABLE 0 (no process of a job's uid can read our memory or fds through /proc)."""
    with suppress(Exception):
        _PRCTL(_ctypes.dlsym(_ctypes.dlopen(None, 0), "prctl"))(4, 0, 0, 0, 0)
