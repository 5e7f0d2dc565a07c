"""Self-Instruct's ROUGE-L > 0.7 filter with MinHash-pruned candidates: recall against brute force
on real seed instructions and perturbed copies, at a fraction of the comparisons."""

from __future__ import annotations

import json
import random

from synthflow.dedup.rouge import RougePool

from .conftest import SEED_TASKS


def _perturb(text: str, rng: random.Random) -> str:
    w = text.split()
    op = rng.choice(["drop", "swap", "add", "replace"])
    i = rng.randrange(len(w))
    if op == "drop" and len(w) > 3:
        del w[i]
    elif op == "swap" and len(w) > 2:
        j = rng.randrange(len(w))
        w[i], w[j] = w[j], w[i]
    elif op == "add":
        w.insert(i, rng.choice(["please", "carefully", "briefly", "also", "the"]))
    else:
        w[i] = rng.choice(["story", "list", "answer", "text", "question"])
    return " ".join(w)


def test_pruned_rouge_matches_brute_force():
    seeds = [json.loads(line)["instruction"] for line in (SEED_TASKS).read_text().splitlines()]
    rng = random.Random(5)
    queries = [_perturb(_perturb(s, rng), rng) for s in seeds] + [_perturb(s, rng) for s in seeds]
    pruned, brute = RougePool(), RougePool(brute_force=True)
    keys = [f"seed-{i}" for i in range(len(seeds))]
    pruned.add(keys, seeds)
    brute.add(keys, seeds)
    p = pruned.nearest(queries)
    b = brute.nearest(queries)
    too_similar = [i for i, x in enumerate(b) if x.rouge_l > 0.7]
    assert len(too_similar) > 200
    caught = [i for i in too_similar if p[i].rouge_l > 0.7]
    recall = len(caught) / len(too_similar)
    assert recall >= 0.97, recall
    # pruning never invents similarity: a reported score is a real ROUGE-L of a real pool member
    for i in range(len(queries)):
        assert p[i].rouge_l <= b[i].rouge_l + 1e-12
    assert pruned.comparisons < 0.1 * brute.comparisons, (pruned.comparisons, brute.comparisons)


def test_check_and_add_grows_the_pool():
    pool = RougePool()
    got = pool.check_and_add(
        ["a", "b", "c"],
        ["Write a poem about the sea.", "Write a poem about the sea!", "List three prime numbers."],
    )
    assert got[0].key is None and got[1].key == "a" and got[1].rouge_l > 0.7 and got[2].rouge_l < 0.7
    assert len(pool) == 2
