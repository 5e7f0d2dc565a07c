"""The sandbox's clean parents (``Zygote``): forked by the fork server before it reads any job, one
lean and one warm (the modules programs commonly import are loaded). Each forks a job's children on
request and hands them their side of the job through a pipe of its own; neither ever reads a job.
A child installs its seccomp filter and audit hook, drops to its uid and runs its entry point.
Standard library only, and as little of it as possible: a child's fork and exit cost grows with
its parent's memory."""

import _signal as signal
import _socket
import fcntl
import gc
import marshal
import os
import resource
import struct
import sys

from synthflow.sandbox import harness, policy, wire  # noqa: F401 - policy: in sys.modules before any program runs
from synthflow.sandbox.guard import install_guard
from synthflow.sandbox.seccomp import install_base_seccomp, install_seccomp
from synthflow.sandbox.wire import suppress

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

CLEAN_ENV = {
    "PATH": "/usr/local/bin:/usr/bin:/bin",
    "LANG": "C.UTF-8",
    "PYTHONHASHSEED": "0",
    "HOME": "/nonexistent",
}

ENTRIES = {
    "calls": lambda job: harness.run_calls(job, 3),  # fds: 1 out, 2 err, 3 result
    "serve": lambda job: harness.serve_calls(job, 4, 5),  # + 4 requests in, 5 responses out
    "driver": lambda job: harness.run_driver(job, 4, 5, 3),  # + 4 requests out, 5 responses in
}


def _read_job(fd):
    head = wire.read_exact(fd, 4)
    if head is None:
        return None
    n = struct.unpack(">I", head)[0]
    body = wire.read_exact(fd, n)
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
            install_guard(
                workdir, res_fd, nonce, policy, job.get("entry_points") or (), job.get("modules") or ()
            )
        except BaseException as e:  # noqa: BLE001
            with suppress(BaseException):
                wire.write_frame(res_fd, {"nonce": nonce, "setup_error": repr(e)[:300]})
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
                with suppress(BlockingIOError):
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
        with suppress(OSError):  # a child that died before reading: its verdict says so
            with suppress(OSError):
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
        with suppress(OSError):
            self.sock.close()
        with suppress(ChildProcessError):
            os.waitpid(self.pid, 0)
