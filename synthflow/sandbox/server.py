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

import _signal as signal
import marshal
import os
import stat
import struct
import sys
import time

from synthflow.sandbox import wire
from synthflow.sandbox.seccomp import no_dumps, seccomp_works
from synthflow.sandbox.wire import suppress
from synthflow.sandbox.zygote import Zygote

KEEP_BYTES = 64 * 1024  # captured per stream
MAX_BYTES = 4 * 1024 * 1024  # more than this in total (stdout, stderr and results): the program is killed
MAX_RESULT = wire.MAX_FRAME
SIGNAL_NAMES = {4: "SIGILL", 6: "SIGABRT", 7: "SIGBUS", 8: "SIGFPE", 9: "SIGKILL", 11: "SIGSEGV",
                13: "SIGPIPE", 14: "SIGALRM", 15: "SIGTERM", 24: "SIGXCPU", 25: "SIGXFSZ", 31: "SIGSYS"}  # fmt: skip


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
    with suppress(OSError):
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
                            with suppress(OSError):
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
                                            with suppress(OSError):
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
            with suppress(ProcessLookupError, PermissionError):
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
    no_dumps()
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
    head = wire.read_exact(fd, 4)
    if head is None:
        return None
    n = struct.unpack(">I", head)[0]
    body = wire.read_exact(fd, n)
    return None if body is None else json.loads(body)


if __name__ == "__main__":
    main()
