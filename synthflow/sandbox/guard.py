"""The audit hook inside each sandbox child: what a program may not do from Python (network, process
creation, signals to others, ctypes, file descriptors by number, writes outside its job folder) and,
under the ``verify`` policy, what reaches into the interpreter (frames, ``gc``, tracing, code swaps,
source compiled at run time that the static policy refuses). Defense in depth: seccomp, the
namespaces and the clean parent hold without it. Standard library only."""

import _thread
import os
import struct
import sys

from synthflow.sandbox import wire
from synthflow.sandbox.wire import suppress

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


def install_guard(workdir, result_fd, nonce, policy="none", entry_points=(), modules=()):
    """Audit hook (cannot be removed from Python code): network, process creation, signals to
    others, ctypes, file descriptors opened by number and writes outside the job's own folder are
    refused and reported. With ``policy="verify"`` also frames, ``gc``, tracing, changing a
    function's code, and source compiled at run time that the static policy refuses. Its tables are
    immutable copies, so a program cannot clear them through this module. (Defense in depth:
    seccomp, the namespaces and the clean parent hold without it.)"""
    own = os.getpid()
    real_write = os.write
    realpath = os.path.realpath
    fsdecode = os.fsdecode
    prefix = realpath(workdir) + os.sep
    dumps = wire.dump_json
    blocked = dict(BLOCKED_EVENTS)
    writes = frozenset(WRITE_EVENTS)
    strict = policy == "verify"
    intro = INTROSPECTION_EVENTS if strict else frozenset()
    frame_attrs, func_attrs = FRAME_ATTRS, FUNC_ATTRS
    eps = frozenset(entry_points)
    mods = frozenset(modules)
    function_type = type(install_guard)
    write_flags = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
    busy = [None]
    get_ident = _thread.get_ident
    getframe = sys._getframe
    program_files = frozenset({"<program>", "<string>", "<call>"})

    def deny(kind, detail):
        with suppress(OSError):
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
