"""The warm fork server. Started once per worker (normally inside bubblewrap: read-only root,
private /tmp, no network, its own pid namespace); it forks one child per program.

Protocol on the inherited pipes: 4-byte big-endian length + JSON, one job in, one verdict out.
Standard library only, so it starts fast and forks small.
"""

import contextlib
import importlib
import json
import os
import resource
import select
import shutil
import signal
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
MAX_BYTES = 4 * 1024 * 1024  # more than this in total: the program is killed
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
    "pty.spawn": "subprocess",
    "os.kill": "signal",
    "os.killpg": "signal",
    "ctypes.dlopen": "ctypes",
    "ctypes.dlsym": "ctypes",
    "ctypes.cdata": "ctypes",
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


def _read_exact(fd, n):
    buf = b""
    while len(buf) < n:
        chunk = os.read(fd, n - len(buf))
        if not chunk:
            return None
        buf += chunk
    return buf


def read_msg(fd):
    head = _read_exact(fd, 4)
    if head is None:
        return None
    body = _read_exact(fd, struct.unpack(">I", head)[0])
    return None if body is None else json.loads(body)


def write_msg(fd, obj):
    data = json.dumps(obj).encode()
    os.write(fd, struct.pack(">I", len(data)) + data)


def _install_guard(workdir, result_fd):
    """Audit hook (cannot be removed from Python code): network, process creation, signals to
    others, ctypes and writes outside the job's own folder are refused and reported."""
    own = os.getpid()
    real_write = os.write
    prefix = os.path.realpath(workdir) + os.sep

    def deny(kind, detail):
        with contextlib.suppress(OSError):
            real_write(
                result_fd, (json.dumps({"violation": kind, "detail": str(detail)[:200]}) + "\n").encode()
            )
        raise PermissionError(f"sandbox: {kind} is blocked ({detail})")

    def hook(event, args):
        kind = BLOCKED_EVENTS.get(event)
        if kind is None and event.startswith("os.exec"):
            kind = "subprocess"
        if kind is not None:
            if kind == "signal" and args and args[0] in (own, 0):
                return  # signalling itself is harmless
            deny(kind, event)
        if event in WRITE_EVENTS:
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


def _child(job, workdir, out_w, err_w, res_w, limits, uid):
    """Runs in the forked child; never returns."""
    try:
        os.setsid()
        os.dup2(out_w, 1)
        os.dup2(err_w, 2)
        os.close(0)  # stdin closed
        if res_w != 3:
            os.dup2(res_w, 3)
            res_w = 3
        os.closerange(4, 65536)
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
        sys.stdin = None
        sys.stdout = open(1, "w", buffering=1, closefd=False)  # noqa: SIM115
        sys.stderr = open(2, "w", buffering=1, closefd=False)  # noqa: SIM115
        _install_guard(workdir, res_w)
    except BaseException as e:  # noqa: BLE001
        try:
            os.write(
                res_w,
                (
                    json.dumps({"status": "error", "exc_type": "SandboxSetup", "message": repr(e)[:300]})
                    + "\n"
                ).encode(),
            )
        finally:
            os._exit(70)
    harness.run_job(job, res_w)


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


def run_one(job, base_tmp, uid, limits):
    workdir = tempfile.mkdtemp(prefix="job-", dir=base_tmp)
    if uid is not None:
        os.chown(workdir, uid, uid)
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    res_r, res_w = os.pipe()
    t0 = time.perf_counter()
    pid = os.fork()
    if pid == 0:
        os.close(out_r)
        os.close(err_r)
        os.close(res_r)
        _child(job, workdir, out_w, err_w, res_w, limits, uid)
    for fd in (out_w, err_w, res_w):
        os.close(fd)
    deadline = t0 + float(job.get("timeout_s", 5.0))
    bufs = {out_r: bytearray(), err_r: bytearray(), res_r: bytearray()}
    total = 0
    open_fds = [out_r, err_r, res_r]
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
            if fd == res_r:
                if len(bufs[fd]) < 1 << 20:
                    bufs[fd] += chunk
                continue
            total += len(chunk)
            if len(bufs[fd]) < KEEP_BYTES:
                bufs[fd] += chunk[: KEEP_BYTES - len(bufs[fd])]
        if total > MAX_BYTES:
            killed_for = "output"
            break
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)  # the whole group: threads, children, everything
    _, status = os.waitpid(pid, 0)
    if uid is not None:
        _sweep(uid)
    duration = time.perf_counter() - t0
    for fd in (out_r, err_r, res_r):
        os.close(fd)
    shutil.rmtree(workdir, ignore_errors=True)
    return verdict_from(bufs[res_r], bufs[out_r], bufs[err_r], status, killed_for, duration, job)


def verdict_from(res, out, err, status, killed_for, duration, job):
    result, violations = None, []
    for line in bytes(res).decode("utf-8", "replace").splitlines():
        try:
            obj = json.loads(line)
        except ValueError:
            continue
        if "violation" in obj:
            violations.append(obj)
        elif result is None and "status" in obj:
            result = obj
    v = {
        "status": "error",
        "exc_type": "",
        "message": "",
        "duration_s": duration,
        "stdout": bytes(out).decode("utf-8", "replace"),
        "stderr": bytes(err).decode("utf-8", "replace"),
        "value": None,
        "value_repr": "",
    }
    if killed_for == "timeout":
        v.update(status="timeout", message=f"wall clock limit {job.get('timeout_s')} s")
    elif killed_for == "output":
        v.update(status="killed", message=f"output limit {MAX_BYTES} bytes exceeded")
    elif result is not None:
        v.update(
            {k: result.get(k, v.get(k)) for k in ("status", "exc_type", "message", "value", "value_repr")}
        )
    elif os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        name = signal.Signals(sig).name if sig in signal.Signals._value2member_map_ else str(sig)
        v.update(status="timeout" if sig == signal.SIGXCPU else "killed", message=f"terminated by {name}")
    else:
        code = os.WEXITSTATUS(status) if os.WIFEXITED(status) else -1
        v.update(
            status="error",
            exc_type="EarlyExit",
            message=f"exited with code {code} before the checks finished",
        )
    if violations:
        v.update(
            status="blocked",
            exc_type="SandboxViolation",
            message="; ".join(f"{x['violation']}: {x['detail']}" for x in violations[:3]),
        )
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
    cfg = json.loads(sys.argv[1])
    uid = cfg.get("uid")
    base_tmp = tempfile.mkdtemp(prefix="synthflow-sandbox-")
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    write_msg(out_fd, {"ready": True, "pid": os.getpid(), "uid": uid, "mode": cfg.get("mode")})
    while True:
        job = read_msg(cmd_fd)
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
            v = run_one(job, base_tmp, uid, limits)
        except Exception as e:  # noqa: BLE001 - the server itself must not die on a bad job
            v = {"status": "error", "exc_type": "SandboxError", "message": repr(e)[:300], "duration_s": 0.0}
        write_msg(out_fd, v)
    shutil.rmtree(base_tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
