"""``synthflow`` command line. User errors print one line and exit 2.

Size: one short ``cmd_*`` per subcommand plus the parser that lists them all in one place, and the
run supervisor (signals, stopping what a run started); the heavy commands live in their own modules."""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from pathlib import Path
from typing import Any, NoReturn

from synthflow import terminal
from synthflow.errors import UserError, positive_int


def _prefect_env() -> None:
    """Ephemeral Prefect with its own home and no telemetry, unless the user set otherwise."""
    from synthflow.model import cache_home

    os.environ.setdefault("PREFECT_HOME", str(cache_home() / "prefect"))
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("DO_NOT_TRACK", "1")
    os.environ.setdefault("PREFECT_SERVER_UI_SHOW_PROMOTIONAL_CONTENT", "false")
    # INFO reaches the Prefect API (the run's Logs tab); the terminal shows warnings and up only
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "INFO")
    os.environ.setdefault("PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL", "WARNING")
    # the temporary server can take a while to start on a busy 2-core machine (default 20 s)
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    home = Path(os.environ["PREFECT_HOME"]).expanduser()
    home.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("PREFECT_MEMO_STORE_PATH", str(home / "memo_store.toml"))
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")


def _reap_orphan_prefect_servers() -> None:
    """A run killed with ``kill -9`` leaves its ephemeral Prefect server (a child uvicorn) orphaned.
    Stop such orphans that belong to our PREFECT_HOME before starting a new run (Linux /proc)."""
    import signal

    home = os.environ.get("PREFECT_HOME", "").encode()
    proc = Path("/proc")
    if not home or not proc.is_dir():
        return
    for d in proc.iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text()
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            if ppid != 1 or b"prefect.server.api.server:create_app" not in (d / "cmdline").read_bytes():
                continue
            if b"PREFECT_HOME=" + home + b"\0" in (d / "environ").read_bytes() + b"\0":
                os.kill(int(d.name), signal.SIGTERM)
        except (OSError, ValueError, IndexError):
            continue


# ---- run -----------------------------------------------------------------------------------------
def overrides(a: argparse.Namespace, *names: str) -> Any:
    """The run's :class:`Overrides` from the parsed options (all of them, or ``names``)."""
    from synthflow.spec import Overrides

    fields = names or tuple(Overrides.model_fields)
    return Overrides(**{f: getattr(a, "set" if f == "sets" else f, None) for f in fields})


def add_override_options(p: argparse.ArgumentParser, *names: str) -> None:
    """``--n``, ``--model``, ... ``--set``: one option per :class:`Overrides` field (or ``names``)."""
    from synthflow.spec import Overrides

    for name, f in Overrides.model_fields.items():
        if names and name not in names:
            continue
        if name == "sets":
            p.add_argument("--set", action="append", metavar="KEY=VALUE", help=f.description)
            continue
        ann = f.annotation
        typ = int if ann in (int, int | None) else str
        p.add_argument(f"--{name.replace('_', '-')}", type=typ, help=f.description)


def kill_descendants(grace_s: float = 3.0) -> int:
    """Stop every process this one started, at any depth (vLLM's engine core and workers, sandbox
    servers, local shards, the ephemeral Prefect server, Redis): SIGTERM, then SIGKILL after
    ``grace_s``. Returns how many there were."""
    import psutil

    me = psutil.Process()
    kids = me.children(recursive=True)
    for k in kids:
        with contextlib.suppress(psutil.Error):
            k.terminate()
    _, alive = psutil.wait_procs(kids, timeout=grace_s)
    for k in alive:
        with contextlib.suppress(psutil.Error):
            k.kill()
    psutil.wait_procs(alive, timeout=grace_s)
    return len(kids)


def supervise(
    argv: list[str], stopped: str = "run stopped; the same command resumes it", log: Path | None = None
) -> int:
    """Run ``synthflow <argv>`` in a child process (its own session, so a terminal's Ctrl-C reaches
    only this one) and stay beside it. SIGINT (Ctrl-C) or SIGTERM stops the run at once: one line,
    every process the run started is stopped (vLLM's engine core and workers, sandbox servers, local
    shards, the ephemeral Prefect server, Redis), exit 130 or 143. When the run ends, whatever it left
    running is stopped too. Nothing half-written is published (files are renamed into place when
    complete), and the same command resumes a stopped run."""
    import ctypes
    import signal
    import subprocess

    # orphans of the run (a dead parent's vLLM workers) become ours, so none escapes the cleanup
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER

    def stop(signum: int, _frame: Any) -> None:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C does not cut the cleanup short
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        what = {signal.SIGINT: "interrupted", signal.SIGUSR1: "cancelled in Prefect"}.get(
            signum, "terminated"
        )
        with contextlib.suppress(OSError):
            proc.kill()  # the run's own process first, at once: no crash reports from its tasks
        kill_descendants()  # then what it started (now ours): SIGTERM, SIGKILL after 3 s
        sys.stdout.flush()
        print(
            f"synthflow: {what}: {stopped}" + (f" (log: {log})" if log else ""), file=sys.stderr, flush=True
        )
        os._exit(130 if signum == signal.SIGUSR1 else 128 + signum)

    env = {**os.environ, "SYNTHFLOW_SUPERVISED": "1"}
    me = os.getpid()

    def die_with_me() -> None:  # in the child: if the supervisor is killed (kill -9), so is the run
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG
        if os.getppid() != me:
            os._exit(1)

    streams: dict[str, Any] = {}
    if log is not None:  # the run's processes print to the log; the terminal keeps synthflow's own lines
        log.parent.mkdir(parents=True, exist_ok=True)
        f = open(log, "ab")  # noqa: SIM115 - the child holds it; closed when it ends
        t_out, t_err = os.dup(1), os.dup(2)
        env |= {"SYNTHFLOW_TERMINAL_FDS": f"{t_out},{t_err}", "SYNTHFLOW_LOG": str(log)}
        streams = {"stdout": f, "stderr": f, "pass_fds": (t_out, t_err)}
    proc = subprocess.Popen([sys.executable, "-m", "synthflow.cli", *argv], env=env, start_new_session=True,
                            preexec_fn=die_with_me, **streams)  # fmt: skip
    if log is not None:
        f.close()
        os.close(t_out)
        os.close(t_err)
    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGUSR1, stop)  # the run's flow was cancelled in Prefect (recipe_flow)
    rc = proc.wait()
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    kill_descendants()
    if rc < 0:  # the run's process was killed (the OOM killer, kill -9): one line, not a silent code
        where = f" (log: {log})" if log else ""
        print(f"synthflow: error: the run's process was killed by signal {-rc}; the same command resumes "
              f"it{where}", file=sys.stderr, flush=True)  # fmt: skip
        return 2
    return rc


def cmd_run(a: argparse.Namespace) -> int:
    _prefect_env()
    from synthflow import run
    from synthflow.summary import format_summary

    if os.environ.get("SYNTHFLOW_SUPERVISED") == "1":
        terminal.claim()  # the run's process: its own lines to the terminal, the rest to the log
    ov = overrides(a)
    if a.shards < 1:
        raise UserError(f"--shards {a.shards}: give 1 or more")
    if a.work_pool and a.shards < 2:
        raise UserError("--work-pool: only for a sharded run (--shards 2 or more)")
    recipe = run.check(a.recipe, ov, shards=a.shards)  # bad input fails here, before Prefect starts
    if os.environ.get("SYNTHFLOW_SUPERVISED") != "1" and a.argv is not None:
        log = None
        if not a.verbose:  # engine and Prefect chatter to a log file beside the runs
            from datetime import UTC, datetime

            from synthflow.store import STAGING

            stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
            log = (
                Path(recipe.output.root).resolve()
                / STAGING
                / "logs"
                / f"{recipe.name}-{stamp}-{os.getpid()}.log"
            )
        return supervise(a.argv, log=log)
    _reap_orphan_prefect_servers()
    from flows.recipe_flow import run_recipe

    summary = run_recipe(recipe=a.recipe, overrides=ov, shards=a.shards, work_pool=a.work_pool, redis=a.redis,
                         dask=a.dask)  # fmt: skip
    lines = format_summary(summary)
    if terminal.log_file() and summary.get("path"):  # the full log goes with the published run
        import shutil

        dest = Path(summary["path"]) / "run.log"
        with contextlib.suppress(OSError):
            shutil.copyfile(terminal.log_file(), dest)
            lines += f"\n  full log: {dest}"
    print(lines, file=terminal.out(), flush=True)
    if a.fail_short and summary.get("shortfall"):
        print(f"synthflow: error: {summary['shortfall']} (--fail-short)", file=terminal.err(), flush=True)
        return 3
    return 0


# ---- target ----------------------------------------------------------------------------------------
def cmd_target(a: argparse.Namespace) -> int:
    """Evaluate a student per skill, then generate for its weakest skills, ``--rounds`` times."""
    _prefect_env()
    from synthflow import run
    from synthflow.engines.pool import EnginePool
    from synthflow.recipe import EngineConfig
    from synthflow.target import load_eval, run_target

    rows = load_eval(a.eval)
    if a.rounds < 1:
        raise UserError(f"--rounds {a.rounds}: give 1 or more")
    ov = overrides(a, "n", "out", "max_items", "sets")
    recipe = run.check(a.recipe, ov)  # a bad recipe fails before the student is loaded
    if recipe.generator.name != "skillmix":
        raise UserError(
            f"--recipe {a.recipe}: synthflow target weights SkillMix skills; give a skillmix recipe"
        )
    if a.student_url:
        cfg = EngineConfig(name="openai", base_url=a.student_url, model=a.student)
    else:
        cfg = EngineConfig(name="vllm", model=a.student, max_model_len=2048)
    _reap_orphan_prefect_servers()
    from flows.recipe_flow import run_recipe

    # engines by role from one pool; each starts on its first call and is stopped (its memory
    # freed) before a generation run, which loads its own
    pool = EnginePool()
    student = pool.add("student", cfg, where="--student")
    if cfg.name == "openai":
        student.engine.preflight()  # a down endpoint: one line, exit 2
    judge = None  # the student grades free-text answers against their references unless told
    if a.judge_url:
        judge = pool.add(
            "judge", EngineConfig(name="openai", base_url=a.judge_url, model=a.judge), where="--judge"
        )
        judge.engine.preflight()
    elif a.judge != "student":
        judge = pool.add(
            "judge", EngineConfig(name="vllm", model=a.judge, max_model_len=2048), where="--judge"
        )

    def generate(recipe_path: str, sets: list[str]) -> dict[str, Any]:
        round_ov = ov.model_copy(update={"sets": [*(ov.sets or []), *sets]})
        return run_recipe(recipe=recipe_path, overrides=round_ov)

    from datetime import UTC, datetime

    out = Path(
        a.target_out
        or Path(a.out or recipe.output.root) / "target" / datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
    )
    try:
        run_target(student, rows, a.recipe, a.rounds, out, generate, judge=judge, grader=a.grader,
                   judge_min=a.judge_min)  # fmt: skip
    finally:
        pool.close()
    print(f"wrote {out / 'target.json'}")
    return 0


# ---- query ---------------------------------------------------------------------------------------
class OneLineParser(argparse.ArgumentParser):
    """Usage errors are one line (``synthflow dedup: error: argument --num-perm: ...``), exit 2;
    ``--help`` still shows the whole usage."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def connect(root: str, read_only: bool = False) -> Any:
    """A DuckDB connection with views ``examples`` and ``rejects`` over every finished run under
    ``root``. ``read_only``: files outside ``root`` cannot be read, nothing can be attached, and the
    configuration is locked (``query`` also admits only SELECT and EXPLAIN statements)."""
    import duckdb

    from synthflow.store import table_files

    con = duckdb.connect()
    for view in ("examples", "rejects"):
        files = table_files(Path(root), view)
        if files:
            lst = ", ".join("'" + f.replace("'", "''") + "'" for f in files)
            con.execute(f"CREATE VIEW {view} AS SELECT * FROM read_parquet([{lst}], union_by_name=true)")
    if read_only:
        quoted = str(Path(root).resolve()).replace("'", "''")
        con.execute(f"SET allowed_directories=['{quoted}/']")
        con.execute("SET enable_external_access=false")
        con.execute("SET lock_configuration=true")
    return con


READ_STATEMENTS = ("SELECT", "EXPLAIN")


def read_only_sql(con: Any, sql: str) -> None:
    """One line for an empty query or a statement that is not a read (COPY, CREATE, ATTACH, ...)."""
    import duckdb

    try:
        statements = con.extract_statements(sql)
    except duckdb.Error as e:
        raise UserError(f"query: {str(e).splitlines()[0]}") from None
    if not statements:
        raise UserError("query: empty query; give a SELECT, e.g. 'SELECT count(*) FROM examples'")
    for st in statements:
        kind = str(st.type).rsplit(".", 1)[-1]
        if kind not in READ_STATEMENTS:
            raise UserError(f"query: {kind} statements are not allowed; query is read-only (SELECT, EXPLAIN)")


def cmd_query(a: argparse.Namespace) -> int:
    import duckdb

    from synthflow.store import completed_runs

    if not completed_runs(Path(a.out)):
        raise UserError(f"{a.out}: no finished runs here (pass --out ROOT, or run a recipe first)")
    con = connect(a.out, read_only=True)
    read_only_sql(con, a.sql)
    try:  # errors can come while the rows are fetched (a failing CAST), not only when parsed
        rel = con.sql(a.sql)
        if rel is None:
            return 0
        if a.format == "csv":
            import csv

            rows = rel.fetchall()
            w = csv.writer(sys.stdout)
            w.writerow(rel.columns)
            w.writerows(rows)
        elif a.format == "json":
            import json

            cols = rel.columns
            for row in rel.fetchall():
                print(json.dumps(dict(zip(cols, row, strict=True)), default=str))
        else:
            rel.show(max_width=200, max_rows=a.max_rows)
    except duckdb.Error as e:
        raise UserError(f"query: {str(e).splitlines()[0]}") from None
    return 0


# ---- model ---------------------------------------------------------------------------------------
def cmd_prepare_model(a: argparse.Namespace) -> int:
    from synthflow.model import prepare_default_model

    path = prepare_default_model(force=a.force)
    print(path)
    return 0


def cmd_list(a: argparse.Namespace) -> int:
    from synthflow import registry

    for kind in registry.KINDS:
        print(f"{kind}: {', '.join(registry.names(kind))}")
    return 0


def cmd_serve(a: argparse.Namespace) -> int:
    _prefect_env()
    from flows.deployments import select_specs, serve_all

    select_specs(a.recipes)  # an unknown name or a broken recipe fails here, in one line
    if os.environ.get("SYNTHFLOW_SUPERVISED") != "1" and a.argv is not None:
        # Ctrl-C stops the server and the flow runs it started (Prefect's own handler waits for them)
        return supervise(a.argv, stopped="serve stopped")
    serve_all(a.recipes)
    return 0


# ---- parser --------------------------------------------------------------------------------------
# commands whose parsers live in modules of their own: built only when needed, so that e.g.
# `synthflow dedup` does not import the scoring and sandbox stacks before it starts
_GROUPS = {
    "verify": ("verify",),
    "dedup": ("dedup", "decontam"),
    "scoring": ("score", "train-scorer"),
    "report": ("report",),
}


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The whole parser, or (``command`` given, e.g. from argv) only the group that has it."""
    p = OneLineParser(
        prog="synthflow",
        description="Generate verified, deduplicated, scored synthetic SFT data from declarative recipes.",
        epilog="Examples:\n  synthflow run recipes/math.yaml --n 20\n"
        '  synthflow query "SELECT recipe, count(*) FROM examples GROUP BY 1"\n'
        "  synthflow run recipes/math.yaml --engine openai --base-url http://127.0.0.1:8000/v1 --model NAME",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = p.add_subparsers(dest="cmd", required=True, metavar="COMMAND")

    r = sub.add_parser("run", help="run a recipe through the Prefect flow and publish its dataset")
    r.add_argument("recipe", help="recipe YAML (or a name under recipes/, e.g. math)")
    add_override_options(r)
    r.add_argument(
        "--shards",
        type=positive_int,
        default=1,
        help="split the run's batches over N processes (or N workers with --work-pool); the merged "
        "dataset equals the one-process run's (not for self_instruct or the select filter)",
    )
    r.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        help="show the engine's and Prefect's logs live (default: they go to a log file under "
        "<out>/.synthflow-staging/logs/, copied into the run folder as run.log; the terminal shows "
        "progress, the summary and errors)",
    )
    r.add_argument(
        "--fail-short",
        action="store_true",
        help="exit 3 when fewer rows than --n were accepted (the rows found are still published); "
        "for scheduled runs",
    )
    r.add_argument(
        "--work-pool",
        help="run the shards as flow runs on this Prefect work pool (one worker per GPU host); "
        "needs PREFECT_API_URL and --redis",
    )
    r.add_argument(
        "--redis",
        help="Redis URL the shards share for their batch queue, e.g. redis://HOST:6379/0 "
        "(default: a private local redis-server)",
    )
    r.add_argument(
        "--dask",
        metavar="ADDRESS|local:N",
        help="run the verify step's programs on a Dask cluster (scheduler address, or local:N worker "
        "processes), each worker in its own sandbox; the same verdicts",
    )
    r.set_defaults(fn=cmd_run)

    t = sub.add_parser(
        "target",
        help="evaluate a student per skill, then generate more for its weakest skills (SkillMix)",
        description="Each round: the student answers a skill-tagged evaluation set (graded by math-verify "
        "for numbers, exact match for short answers, a reference-guided judge for free text), "
        "per-skill accuracy is printed and saved, and the recipe runs with the evaluation's skills "
        "weighted by (1 - accuracy). Training the student is up to you.",
    )
    t.add_argument(
        "--eval",
        required=True,
        help="JSONL with skill (or skills), question, answer per line (example: "
        "builtin:skill_eval.jsonl), or the folder of a finished SkillMix run (its skills, "
        "instructions and responses)",
    )
    t.add_argument(
        "--grader",
        choices=["auto", "math", "exact", "judge"],
        default="auto",
        help="how answers are graded (default auto: math-verify for a numeric reference, exact match "
        "for one of at most 6 words, else the judge)",
    )
    t.add_argument(
        "--judge",
        default="student",
        help="the reference-guided judge's model: 'student' (default: the student's engine), "
        "'default' (embedded), a folder or HF id, or a served name with --judge-url",
    )
    t.add_argument("--judge-url", help="OpenAI-compatible base URL of the judge")
    t.add_argument(
        "--judge-min", type=float, default=7.0, help="judge score (1-10) from which an answer is right"
    )
    t.add_argument("--recipe", default="skillmix", help="a SkillMix recipe (default: recipes/skillmix.yaml)")
    t.add_argument(
        "--student",
        default="default",
        help="student model: 'default' (embedded), a folder or HF id, or a served name with --student-url",
    )
    t.add_argument("--student-url", help="OpenAI-compatible base URL of the student")
    t.add_argument("--rounds", type=positive_int, default=2, help="evaluate-and-generate rounds (default 2)")
    add_override_options(t, "n", "max_items", "out")
    t.add_argument(
        "--target-out",
        help="folder for target.json and the per-round skill files (default OUT/target/<time>)",
    )
    add_override_options(t, "sets")
    t.set_defaults(fn=cmd_target)

    q = sub.add_parser("query", help="DuckDB SQL over all finished runs (views: examples, rejects)")
    q.add_argument("sql")
    q.add_argument("--out", default="out", help="output root (default ./out)")
    q.add_argument("--format", choices=["table", "csv", "json"], default="table")
    q.add_argument("--max-rows", type=positive_int, default=40)
    q.set_defaults(fn=cmd_query)

    m = sub.add_parser("prepare-model", help="fetch and convert the embedded default model (idempotent)")
    m.add_argument("--force", action="store_true", help="convert again even if the checksums match")
    m.set_defaults(fn=cmd_prepare_model)

    ls = sub.add_parser("list", help="list registered generators, engines, filters, verifiers, seed sources")
    ls.set_defaults(fn=cmd_list)

    s = sub.add_parser(
        "serve", help="serve the recipe deployments of prefect.yaml (cron schedules) with flow.serve"
    )
    s.add_argument(
        "recipes",
        nargs="*",
        help="deployments to serve, by deployment name (math-nightly), recipe name (math) or the recipe "
        "path listed in prefect.yaml (default: all of them)",
    )
    s.set_defaults(fn=cmd_serve)

    want = {g for g, cmds in _GROUPS.items() if command is None or command in cmds}
    if "verify" in want:
        from synthflow.sandbox.verify_cli import add_parser as add_verify

        add_verify(sub)
    if "dedup" in want:
        from synthflow.dedup.cli import add_parsers as add_dedup

        add_dedup(sub)
    if "scoring" in want:
        from synthflow.rescore import add_parsers as add_scoring

        add_scoring(sub)
    if "report" in want:
        from synthflow.report import add_parser as add_report

        add_report(sub)
    return p


# subcommands whose --out is written: True for a folder, False for a file
WRITES_OUT = {"run": True, "target": True, "dedup": True, "decontam": True, "score": True,
              "train-scorer": True, "report": False, "verify": False}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    first = args[0] if args else None
    grouped = any(first in cmds for cmds in _GROUPS.values())
    parser = build_parser(first if grouped else None)
    a = parser.parse_args(args)
    a.argv = list(args)  # the command line, for a supervised run's child
    try:
        out = getattr(a, "out", None)
        if out and a.cmd in WRITES_OUT:
            from synthflow.atomic import check_writable

            check_writable(out, folder=WRITES_OUT[a.cmd])
        return a.fn(a)
    except UserError as e:
        print(terminal.error_line(f"synthflow: error: {e}"), file=terminal.err(), flush=True)
        return 2
    except KeyboardInterrupt:
        print("synthflow: interrupted", file=terminal.err(), flush=True)
        return 130
    except OSError as e:  # a full disk, an unwritable or vanished path: one line naming it
        where = f"{e.filename}: " if e.filename else ""
        print(
            terminal.error_line(f"synthflow: error: {where}{e.strerror or e}"),
            file=terminal.err(),
            flush=True,
        )
        return 2


if __name__ == "__main__":
    sys.exit(main())
