"""IFD and the judge on the real embedded model (vLLM on the CPU), through ``synthflow score``.

The probe is built from data nobody here wrote: the 175 human-written Self-Instruct seed tasks, each
instruction paired once with its own output and once with another task's output. IFD must separate
the two; the judge must give parseable verdicts under structured outputs."""

from __future__ import annotations

import json
import random

import pyarrow.parquet as pq
import pytest
from sklearn.metrics import roc_auc_score

from .conftest import SEED_TASKS, run_cli

pytestmark = pytest.mark.slow


def probe(path) -> list[dict]:
    tasks = [json.loads(line) for line in (SEED_TASKS).read_text().splitlines()]
    pairs = []
    for t in tasks:
        inst = t["instances"][0]
        instr = t["instruction"] + (f"\n\n{inst['input']}" if inst["input"].strip() else "")
        pairs.append((t["id"], instr, inst["output"]))
    perm = list(range(len(pairs)))
    random.Random(0).shuffle(perm)
    rows = []
    for i, (tid, instr, out) in enumerate(pairs):
        j = perm[i] if perm[i] != i else perm[(i + 1) % len(pairs)]
        rows.append({"id": f"{tid}-match", "instruction": instr, "response": out, "match": 1})
        rows.append({"id": f"{tid}-mismatch", "instruction": instr, "response": pairs[j][2], "match": 0})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return rows


def test_ifd_separates_matched_pairs_and_judge_parses(tmp_path):
    rows = probe(tmp_path / "pairs.jsonl")
    p = run_cli(
        "score", str(tmp_path / "pairs.jsonl"), "--scorer", "ifd", "--scorer", "judge",
        "--param", "judge.sample=0.15", "--instruction-field", "instruction", "--response-field", "response",
        "--out", str(tmp_path / "out"), env={"SYNTHFLOW_PROGRESS": "0"}, cwd=tmp_path, timeout=1800,
    )  # fmt: skip
    assert p.returncode == 0, p.stderr[-3000:]
    t = pq.read_table(tmp_path / "out" / "scored.parquet").to_pylist()
    assert [r["id"] for r in t] == [r["id"] for r in rows]
    assert all(r["score_ifd"] is not None for r in t)
    auc = roc_auc_score([r["match"] for r in t], [-r["score_ifd"] for r in t])
    print(f"IFD AUC matched vs mismatched: {auc:.3f}")
    assert auc >= 0.9, auc  # measured 0.96 on this model
    matched = sorted(r["score_ifd"] for r in t if r["match"])
    assert matched[len(matched) // 2] < 1.0  # a typical matched pair: the instruction helps
    judged = [r for r in t if r["score_judge"] is not None or r["judge_error"] is not None]
    assert 30 <= len(judged) <= 80  # about 15% of 350, chosen by row id
    parsed = [r for r in judged if r["score_judge"] is not None]
    assert len(parsed) >= 0.75 * len(judged), [r["judge_error"] for r in judged]
    assert all(1 <= r["score_judge"] <= 10 and r["judge_rubric"] == "judge/general.jinja2@1" for r in parsed)
    assert (
        "scorer_model: vllm SmolLM2-135M-Instruct" in p.stdout
        and "judge: vllm SmolLM2-135M-Instruct" in p.stdout
    )
