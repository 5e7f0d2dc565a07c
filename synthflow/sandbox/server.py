"""The warm fork server. Started once per worker inside bubblewrap (read-only root, private size-capped
/tmp, no network, its own pid namespace); it forks one child per program (and, in driver mode, a
second child for the tests).

Protocol on the inherited pipes: 4-byte big-endian length + JSON, one job in, one result out. The
server itself is never dumpable (no process of a job's uid can read its memory or open its file
descriptors through /proc); every child runs as a uid of its own (as root), with only the file
descriptors of its job, under rlimits, a seccomp filter (no fork, exec, socket, ptrace or new
namespace) and an audit hook; what it sends back is counted against the output cap, limited in size
and depth before it is parsed, and must carry the job's nonce.
Standard library only, so it starts fast and forks small.
"""

import contextlib
import ctypes
import errno
import fcntl
import importlib
import json
import os
import resource
import select
import signal
import stat
import struct
import sys
import tempfile
import time

from synthflow.sandbox import harness

# Modules user programs commonly import: loaded once here, so each forked child finds them warm.
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
    "threading",
    "typing",
)
for _name in WARM_MODULES:
    importlib.import_module(_name)

KEEP_BYTES = 64 * 1024  # captured per stream
MAX_BYTES = 4 * 1024 * 1024  # more than this in total (stdout, stderr and results): the program is killed
MAX_RESULT = harness.MAX_FRAME
CLEAN_ENV = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "PYTHONHASHSEED": "0"}

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
}
# Introspection (frames, gc, tracing) stays allowed: namedtuple, logging and warnings need it, and it
# gains a program nothing now that the expected values never enter its process.
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


# ---- seccomp: a classic-BPF filter for the children (x86-64) ---------------------------------------
def _seccomp_program():
    """Deny socket creation, fork/vfork/exec, ptrace, cross-process memory access and new namespaces;
    allow clone only for threads (CLONE_THREAD); anything not x86-64 is killed."""
    import platform

    if platform.machine() != "x86_64":
        return None

    def ins(code, jt, jf, k):
        return struct.pack("HBBI", code, jt, jf, k)

    ld, jeq, jge, jset, ret = 0x20, 0x15, 0x35, 0x45, 0x06
    kill, allow = 0x80000000, 0x7FFF0000
    eperm, enosys = 0x00050000 | errno.EPERM, 0x00050000 | errno.ENOSYS
    deny = {
        41: eperm,  # socket
        53: eperm,  # socketpair
        42: eperm,  # connect
        49: eperm,  # bind
        57: eperm,  # fork
        58: eperm,  # vfork
        59: eperm,  # execve
        322: eperm,  # execveat
        101: eperm,  # ptrace
        310: eperm,  # process_vm_readv
        311: eperm,  # process_vm_writev
        272: eperm,  # unshare
        308: eperm,  # setns
        435: enosys,  # clone3: its flags cannot be read here; libc falls back to clone
    }
    prog = [ins(ld, 0, 0, 4), ins(jeq, 1, 0, 0xC000003E), ins(ret, 0, 0, kill), ins(ld, 0, 0, 0)]
    prog += [ins(jge, 0, 1, 0x40000000), ins(ret, 0, 0, kill)]  # x32 syscalls
    for nr, action in deny.items():
        prog += [ins(jeq, 0, 1, nr), ins(ret, 0, 0, action)]
    # clone (56): only with CLONE_THREAD (a thread), not a new process
    prog += [ins(jeq, 0, 3, 56), ins(ld, 0, 0, 16), ins(jset, 1, 0, 0x00010000), ins(ret, 0, 0, eperm)]
    prog += [ins(ret, 0, 0, allow)]
    return b"".join(prog), len(prog)


_SECCOMP = _seccomp_program()
_LIBC = ctypes.CDLL(None, use_errno=True)


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_char_p)]


def install_seccomp():
    """No new privileges, then the filter. Returns False when the kernel refuses it."""
    if _SECCOMP is None:
        return False
    prog = _SockFprog(_SECCOMP[1], _SECCOMP[0])
    if _LIBC.prctl(38, 1, 0, 0, 0) != 0:  # PR_SET_NO_NEW_PRIVS
        return False
    return _LIBC.prctl(22, 2, ctypes.byref(prog), 0, 0) == 0  # PR_SET_SECCOMP, SECCOMP_MODE_FILTER


def seccomp_works():
    """Probe in a throwaway child: can a filter be installed here?"""
    pid = os.fork()
    if pid == 0:
        os._exit(0 if install_seccomp() else 1)
    _, status = os.waitpid(pid, 0)
    return os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0


def _no_dumps():
    with contextlib.suppress(Exception):
        _LIBC.prctl(4, 0, 0, 0, 0)  # PR_SET_DUMPABLE 0: /proc/<pid>/{mem,fd,...} become root's


# ---- the guard inside each child ----------------------------------------------------------------------
def _install_guard(workdir, result_fd, nonce):
    """Audit hook (cannot be removed from Python code): network, process creation, signals to
    others, ctypes and writes outside the job's own folder are refused and reported. Its tables are
    immutable copies, so a program cannot clear them through the server module. (A defense in depth:
    seccomp and the namespaces hold without it.)"""
    own = os.getpid()
    real_write = os.write
    prefix = os.path.realpath(workdir) + os.sep
    dumps = json.dumps
    blocked = frozenset(BLOCKED_EVENTS)
    kinds = tuple(BLOCKED_EVENTS.items())
    writes = frozenset(WRITE_EVENTS)

    def deny(kind, detail):
        with contextlib.suppress(OSError):
            data = dumps({"nonce": nonce, "violation": kind, "detail": str(detail)[:200]}).encode()
            real_write(result_fd, struct.pack(">I", len(data)) + data)
        raise PermissionError(f"sandbox: {kind} is blocked ({detail})")

    def hook(event, args):
        kind = None
        if event in blocked:
            kind = next(k for e, k in kinds if e == event)
        elif event.startswith("os.exec"):
            kind = "subprocess"
        if kind is not None:
            if kind == "signal" and args and args[0] in (own, 0):
                return  # signalling itself is harmless
            deny(kind, event)
        if event in writes:
            path = args[0] if args else None
            if event == "open":
                mode = args[1] if len(args) > 1 else "r"
                flags = args[2] if len(args) > 2 else 0
                writing = (isinstance(mode, str) and any(c in mode for c in "wax+")) or (
                    isinstance(flags, int)
                    and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND)
                )
                if not writing:
                    return
            if isinstance(path, int) or path is None:
                return
            try:
                real = os.path.realpath(os.fsdecode(path))
            except (TypeError, ValueError):
                return
            if not (real + os.sep).startswith(prefix) and real not in ("/dev/null",):
                deny("filesystem", f"{event} {real}")

    sys.addaudithook(hook)


def _child(job, workdir, fds, limits, uid, entry, use_seccomp):
    """Runs in a forked child; never returns. ``fds`` become 1, 2, 3, ... in order."""
    res_fd = 3
    try:
        try:
            os.setsid()
            high = [fcntl.fcntl(fd, fcntl.F_DUPFD, 200 + i) for i, fd in enumerate(fds)]
            for target, fd in enumerate(high, start=1):
                os.dup2(fd, target)
            os.close(0)  # stdin closed
            os.closerange(len(fds) + 1, 65536)  # nothing of the server or other jobs stays open
            os.chdir(workdir)
            os.environ.clear()
            os.environ.update(CLEAN_ENV, HOME=workdir, TMPDIR=workdir)
            tempfile.tempdir = workdir
            mem = limits["mem_bytes"]
            resource.setrlimit(resource.RLIMIT_AS, (mem, mem))
            cpu = int(limits["cpu_s"])
            resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
            resource.setrlimit(resource.RLIMIT_FSIZE, (limits["fsize"], limits["fsize"]))
            resource.setrlimit(resource.RLIMIT_NOFILE, (limits["nofile"], limits["nofile"]))
            resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
            if uid is not None:
                os.setgroups([])
                os.setgid(uid)
                os.setuid(uid)
            resource.setrlimit(resource.RLIMIT_NPROC, (limits["nproc"], limits["nproc"]))
            if use_seccomp and not install_seccomp():
                raise OSError("seccomp filter refused")
            sys.stdin = None
            sys.stdout = open(1, "w", buffering=1, closefd=False)  # noqa: SIM115
            sys.stderr = open(2, "w", buffering=1, closefd=False)  # noqa: SIM115
            _install_guard(workdir, res_fd, job["nonce"])
        except BaseException as e:  # noqa: BLE001
            with contextlib.suppress(BaseException):
                harness.write_frame(
                    res_fd,
                    {"nonce": job["nonce"], "setup_error": repr(e)[:300]},
                )
            os._exit(70)
        entry()
    finally:
        os._exit(70)  # whatever happens, the child never returns into the server's loop


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
    with contextlib.suppress(OSError):
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
                            with contextlib.suppress(OSError):
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
                                            with contextlib.suppress(OSError):
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


def run_one(job, base_tmp, uids, limits, use_seccomp):
    workdir = tempfile.mkdtemp(prefix="job-", dir=base_tmp)
    driver = job.get("mode") == "driver"
    if uids[0] is not None:
        os.chown(workdir, uids[0], uids[0])
        os.chmod(workdir, 0o700)
    t0 = time.perf_counter()
    kids = []  # (pid, uid)
    if not driver:
        (out_r, out_w), (err_r, err_w), (res_r, res_w) = _pipes(3)
        pid = os.fork()
        if pid == 0:
            for fd in (out_r, err_r, res_r):
                os.close(fd)
            _child(
                job,
                workdir,
                [out_w, err_w, res_w],
                limits,
                uids[0],
                lambda: harness.run_calls(job, 3),
                use_seccomp,
            )
        kids.append((pid, uids[0]))
        for fd in (out_w, err_w, res_w):
            os.close(fd)
        watch = {out_r: "out", err_r: "err", res_r: "res"}
    else:
        (pout_r, pout_w), (perr_r, perr_w), (pres_r, pres_w), (req_r, req_w), (resp_r, resp_w) = _pipes(5)
        (dout_r, dout_w), (derr_r, derr_w), (dres_r, dres_w) = _pipes(3)
        pid = os.fork()
        if pid == 0:  # the program: answers calls
            keep = [pout_w, perr_w, pres_w, req_r, resp_w]
            _child(job, workdir, keep, limits, uids[0], lambda: harness.serve_calls(job, 4, 5), use_seccomp)
        kids.append((pid, uids[0]))
        dwork = tempfile.mkdtemp(prefix="drv-", dir=base_tmp)
        if uids[1] is not None:
            os.chown(dwork, uids[1], uids[1])
            os.chmod(dwork, 0o700)
        pid2 = os.fork()
        if pid2 == 0:  # the tests: decide
            keep = [dout_w, derr_w, dres_w, req_w, resp_r]
            _child(job, dwork, keep, limits, uids[1], lambda: harness.run_driver(job, 4, 5, 3), use_seccomp)
        kids.append((pid2, uids[1]))
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
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)  # the whole group: threads, children, everything
    for pid, _uid in kids:
        _, status = os.waitpid(pid, 0)
        statuses.append(status)
    for uid in {u for _, u in kids}:
        if uid is not None:
            _sweep(uid)
    duration = time.perf_counter() - t0
    for fd in watch:
        os.close(fd)
    remove_tree(workdir)
    if driver:
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
        name = signal.Signals(sig).name if sig in signal.Signals._value2member_map_ else str(sig)
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
    cfg = json.loads(sys.argv[1])
    uids = (cfg.get("uid"), cfg.get("driver_uid"))
    use_seccomp = bool(cfg.get("seccomp")) and seccomp_works()
    base_tmp = tempfile.mkdtemp(prefix="synthflow-sandbox-")
    os.chmod(base_tmp, stat.S_IRWXU | stat.S_IXGRP | stat.S_IXOTH)
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    harness.write_frame(
        out_fd,
        {"ready": True, "pid": os.getpid(), "uid": uids[0], "mode": cfg.get("mode"), "seccomp": use_seccomp},
    )
    while True:
        try:
            job = harness.read_frame(cmd_fd)
        except (ValueError, harness.NotPlain):
            job = None
        if job is None:
            break
        limits = {
            "mem_bytes": int(job.get("mem_mb", 1024)) << 20,
            "cpu_s": max(1, int(float(job.get("timeout_s", 5.0)) + 1)),
            "fsize": 16 << 20,
            "nofile": 64,
            "nproc": int(job.get("nproc", 64)),
        }
        try:
            v = run_one(job, base_tmp, uids, limits, use_seccomp)
        except Exception as e:  # noqa: BLE001 - the server itself must not die on a bad job
            v = {"status": "error", "exc_type": "SandboxError", "message": repr(e)[:300], "duration_s": 0.0}
        v["nonce"] = job.get("nonce")
        harness.write_frame(out_fd, v)
    remove_tree(base_tmp)


if __name__ == "__main__":
    main()
