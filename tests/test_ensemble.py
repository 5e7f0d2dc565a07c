"""Ensemble-Instruct: members write tasks in turn and answer each other's; the paper's output
ensemble keeps an exact match, else the best summed ROUGE-L, and drops a task whose worst pair of
outputs is too far apart; shirking members cannot outvote by agreeing."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pyarrow.parquet as pq
import yaml

from synthflow import registry
from synthflow.engines.base import Sampling
from synthflow.engines.pool import EnginePool
from synthflow.generators.ensemble import final_answer
from synthflow.recipe import load_recipe
from synthflow.seeds import extract_seeds

from .conftest import ROOT, scorers_on_generator_engine
from .helpers import run_local

INSTRUCTION = "Explain why the sky looks blue on a clear day."
SKY = "The sky looks blue because air molecules scatter blue sunlight much more than red light."
SKY2 = "The sky looks blue because the air scatters blue light from the sun more than red light."
OTHER = "Bananas are a good source of potassium and are easy to carry."
SEA = "The sea looks green because of the algae in it."


def _seeds(tmp_path: Path, instructions: list[str]) -> Path:
    p = tmp_path / "seeds.jsonl"
    p.write_text("".join(json.dumps({"instruction": t}) + "\n" for t in instructions))
    return p


def _script(tmp_path: Path, name: str, reply: str | list[str], finish: str = "stop") -> dict:
    p = tmp_path / f"{name}.json"
    p.write_text(json.dumps([{"match": "", "reply": reply, "finish_reason": finish}]))
    return {"name": "fake", "model": name, "options": {"script": str(p)}}


def _recipe(
    tmp_path: Path, members: list[dict], seed_texts: list[str], top: dict | None = None, **opts
) -> Path:
    data = yaml.safe_load((ROOT / "recipes" / "ensemble.yaml").read_text())
    data.update(top or {})
    data["generator"]["options"] = {"members": members, "instructions": False, **opts}
    data["seeds"] = [{"source": "jsonl", "path": str(_seeds(tmp_path, seed_texts))}]
    data["engine"] = _script(tmp_path, "base", "unused")
    data["output"] = {"root": str(tmp_path / "out")}
    scorers_on_generator_engine(data)
    p = tmp_path / "ensemble.yaml"
    p.write_text(yaml.safe_dump(data))
    return p


def _generate(recipe: Path, n: int = 1):
    r = load_recipe(recipe)
    gen = registry.get("generator", "ensemble")(r, extract_seeds(r.seeds))
    pool = EnginePool()
    gen.bind_engines(pool, str(recipe))
    try:
        return gen.run(gen.plan(0, n), pool.add("generator", r.engine), Sampling()), pool
    finally:
        pool.close()


def test_the_answer_the_others_agree_with_is_kept(tmp_path):
    members = [{"engine": _script(tmp_path, "a", SKY)}, {"engine": _script(tmp_path, "b", SKY2), "label": "b"},
               {"engine": _script(tmp_path, "c", SEA)}]  # fmt: skip
    res, pool = _generate(_recipe(tmp_path, members, [INSTRUCTION]))
    (r,) = res.kept
    f = r.fields
    assert f["ens_outputs"] == [SKY, SKY2, SEA] and f["ens_chosen"] in (f["ens_engines"][0], "b")
    assert f["response"] in (SKY, SKY2) and f["ens_agreement"] == max(f["ens_scores"]) >= 0.3
    assert f["ens_scores"][2] < 0.3  # the odd one out agrees little
    assert r.messages[1]["content"] == f["response"]
    # every member answered, each through its own role; the row counts all of their tokens
    assert [(u := pool.roles[f"ensemble_{i}"].usage())["hits"] + u["misses"] for i in range(3)] == [1, 1, 1]
    assert r.gen["completion_tokens"] == sum(len(t.split()) for t in (SKY, SKY2, SEA))


def test_a_task_whose_worst_pair_disagrees_is_dropped(tmp_path):
    """The paper's bar: the worst pair's ROUGE-L must exceed 0.01, even when two outputs agree."""
    members = [{"engine": _script(tmp_path, "a", SKY)}, {"engine": _script(tmp_path, "b", SKY2)},
               {"engine": _script(tmp_path, "c", OTHER)}]  # fmt: skip
    res, _ = _generate(_recipe(tmp_path, members, [INSTRUCTION]))
    assert not res.kept and res.rejects[0].reason.startswith("ensemble:outputs_disagree (worst pair 0.00")


def test_an_exact_match_is_kept_outright(tmp_path):
    members = [{"engine": _script(tmp_path, "a", "Paris.")}, {"engine": _script(tmp_path, "b", "paris")},
               {"engine": _script(tmp_path, "c", OTHER)}]  # fmt: skip
    res, _ = _generate(_recipe(tmp_path, members, ["What is the capital of France?"]))
    (r,) = res.kept
    assert r.fields["response"] == "Paris." and r.fields["ens_chosen"].startswith("fake:a")


def test_shirking_members_cannot_outvote_by_agreeing(tmp_path):
    """Two members echo the instruction (identical, so they agree perfectly), one is empty, one is cut
    at max_tokens: none of them is a candidate, and the one real answer agrees with no one."""
    members = [
        {"engine": _script(tmp_path, "e1", INSTRUCTION)},
        {"engine": _script(tmp_path, "e2", INSTRUCTION)},
        {"engine": _script(tmp_path, "empty", "")},
        {"engine": _script(tmp_path, "cut", SKY2, finish="length")},
        {"engine": _script(tmp_path, "real", SKY)},
    ]
    res, _ = _generate(_recipe(tmp_path, members, [INSTRUCTION]))
    (j,) = res.rejects
    assert j.reason == "ensemble:fewer_than_two_candidates" and j.record.fields["ens_scores"][:4] == [0.0] * 4
    assert j.record.fields["response"] == SKY  # the only candidate, with no one to agree with


def test_a_member_twice_is_refused(tmp_path):
    import pytest

    from synthflow.errors import UserError

    same = _script(tmp_path, "a", SKY)
    with pytest.raises(UserError, match=r"members\[1\] is members\[0\] again"):
        _generate(_recipe(tmp_path, [{"engine": same}, {"engine": same}], [INSTRUCTION], same_model=True))
    other = [{"engine": same}, {"engine": same, "temperature": 0.2}]
    with pytest.raises(UserError, match=r"members\[1\] is the same model as members\[0\]"):
        _generate(_recipe(tmp_path, other, [INSTRUCTION]))  # the paper's members are different models
    _generate(_recipe(tmp_path, other, [INSTRUCTION], same_model=True))


def test_math_mode_votes_on_final_answers(tmp_path):
    members = [
        {"engine": _script(tmp_path, "a", "3 bags of 4 is 12.\nThe answer is 12.")},
        {"engine": _script(tmp_path, "b", "4 + 4 + 4 = 12\nThe answer is: 12")},
        {"engine": _script(tmp_path, "c", "The answer is 13.")},
        {"engine": _script(tmp_path, "d", "I think it is a lot of apples.")},  # no answer: no vote
    ]
    res, _ = _generate(_recipe(tmp_path, members, ["Ann buys 3 bags of 4 apples. How many?"], mode="math"))
    (r,) = res.kept
    assert r.fields["ens_scores"] == [round(1 / 3, 4), round(1 / 3, 4), 0.0, 0.0]
    assert r.fields["response"].endswith("The answer is 12.")
    assert final_answer("so $1,200 in all") == "1200" and final_answer("no number") is None


class _Endpoint:
    """A minimal OpenAI-compatible server that answers every chat request with one text."""

    def __init__(self, text: str):
        class H(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def _send(self, obj):
                data = json.dumps(obj).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):
                self._send({"data": [{"id": "served-model"}]})

            def do_POST(self):
                self.rfile.read(int(self.headers["Content-Length"]))
                self._send({"choices": [{"message": {"content": text}, "finish_reason": "stop"}],
                            "usage": {"prompt_tokens": 5, "completion_tokens": 9}})  # fmt: skip

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()


def test_an_endpoint_and_a_local_engine_in_one_run(tmp_path, monkeypatch):
    """The whole flow with an OpenAI-compatible member beside a local one: both answer every row."""
    ep = _Endpoint(SKY2)
    try:
        members = [
            {"engine": _script(tmp_path, "local", SKY)},
            {"engine": {"name": "openai", "base_url": ep.url, "model": "served-model", "api_key_env": "NONE"},
             "label": "served"},
        ]  # fmt: skip
        top = {"n": 2, "max_items": 2, "batch_size": 2}
        recipe = _recipe(tmp_path, members, [INSTRUCTION, "Explain why the sea looks blue."], top)
        s = run_local(recipe, tmp_path / "out", tmp_path / "c.sqlite3", monkeypatch)
    finally:
        ep.httpd.shutdown()
    rows = pq.read_table(next((Path(s["path"]) / "data").glob("*.parquet"))).to_pylist()
    assert rows and all(r["ens_engines"][1] == "served" and r["ens_outputs"][1] == SKY2 for r in rows)
    assert s["roles"]["ensemble_1"]["misses"] == 2 and s["roles"]["ensemble_0"]["misses"] == 2
    # the run's totals (and the report's cost per row) count the members' engine work
    roles = [s["roles"][f"ensemble_{i}"] for i in (0, 1)]
    assert (
        s["cache"]["misses"] == 4
        and s["tokens"]["completion"] == sum(u["completion_tokens"] for u in roles) > 0
    )


def _task_script(tmp_path: Path, name: str, task: str, answer: str) -> dict:
    """A member that writes ``task`` when asked for a task and answers ``answer`` otherwise."""
    p = tmp_path / f"{name}.json"
    p.write_text(json.dumps([{"match": "^Write a new task", "reply": task}, {"match": "", "reply": answer}]))
    return {"name": "fake", "model": name, "options": {"script": str(p)}}


def test_members_write_tasks_in_turn_and_answer_each_others(tmp_path):
    """As published: one member writes each task (round robin), the others answer it, and there
    are as many tasks as items, not one per seed."""
    task = " Name the largest planet in the solar system.\nOutput: Jupiter"
    members = [
        {"engine": _task_script(tmp_path, "a", task, "Jupiter")},
        {"engine": _task_script(tmp_path, "b", task, "jupiter.")},
        {"engine": _task_script(tmp_path, "c", task, "It is Saturn.")},
    ]
    seeds = ["Name a fruit that is red.", "Name a color of the sky.", "Name a large animal."]
    r = load_recipe(_recipe(tmp_path, members, seeds, instructions=True))
    gen = registry.get("generator", "ensemble")(r, extract_seeds(r.seeds))
    pool = EnginePool()
    gen.bind_engines(pool, "recipe")
    try:
        res = gen.run(gen.plan(0, 9), pool.add("generator", r.engine), Sampling())
    finally:
        pool.close()
    assert len(res.kept) == 9 > len(seeds) and not res.rejects
    writers = [row.fields["ens_writer"] for row in res.kept]
    assert writers == ["fake:a", "fake:b", "fake:c"] * 3
    for row in res.kept:
        f = row.fields
        assert f["instruction"] == "Name the largest planet in the solar system." and f["input"] is None
        assert f["response"] in ("Jupiter", "jupiter.")  # the exact (normalized) match is kept
        assert (
            f["ens_outputs"][f["ens_engines"].index(f["ens_writer"])] == "Jupiter"
        )  # the writer's own output


def test_written_tasks_that_do_not_parse_or_copy_a_seed_are_rejected(tmp_path):
    from synthflow.generators.ensemble import parse_task

    assert parse_task(" Sort the list.\nInput: 3, 1, 2\nOutput: 1, 2, 3", True) == {
        "instruction": "Sort the list.", "input": "3, 1, 2", "output": "1, 2, 3"}  # fmt: skip
    assert parse_task(" Sort the list.\nOutput: 1", True) == "no_input"
    assert parse_task(" Say hi.\nOutput: hi\n\nInstruction: another\nOutput: x", False)["output"] == "hi"
    assert parse_task(" Say hi.", False) == "no_output"
    copy = " Name a fruit that is red.\nOutput: apple"
    members = [{"engine": _task_script(tmp_path, "a", copy, "apple")},
               {"engine": _task_script(tmp_path, "b", copy, "apple")}]  # fmt: skip
    r = load_recipe(_recipe(tmp_path, members, ["Name a fruit that is red."], instructions=True))
    gen = registry.get("generator", "ensemble")(r, extract_seeds(r.seeds))
    pool = EnginePool()
    gen.bind_engines(pool, "recipe")
    try:
        res = gen.run(gen.plan(0, 2), pool.add("generator", r.engine), Sampling())
    finally:
        pool.close()
    assert [j.reason for j in res.rejects] == ["parse:instruction_copies_seed"] * 2
