"""How many light edits of GSM8K test questions the decontamination catches, and how many GSM8K
train questions it flags (distinct problems, mostly): the figures in the README.

    .venv/bin/python bench/decontam_edits.py [--n 300]
"""

from __future__ import annotations

import argparse
import random
import re

from synthflow.dedup.decontam import NgramIndex, load_benchmark, read_rows, shipped_path

NAMES = ["Maria", "Tom", "Aisha", "Kenji", "Olga", "Pedro"]
SYNONYMS = {"buys": "purchases", "has": "owns", "how many": "what number of", "each": "every",
            "total": "overall", "much": "much money"}  # fmt: skip


def edit(q: str, kind: str, rng: random.Random) -> str:
    if kind == "numbers":
        return re.sub(r"\d+", lambda m: str(int(m.group()) + rng.randint(1, 9)), q)
    if kind == "names":  # every capitalized word not starting a sentence
        words = q.split()
        for i in range(1, len(words)):
            if words[i][:1].isupper() and words[i - 1][-1] not in ".?!":
                words[i] = rng.choice(NAMES)
        return " ".join(words)
    if kind == "reorder":  # the sentences before the question shuffled
        sents = re.split(r"(?<=[.!?])\s+", q)
        body = sents[:-1]
        rng.shuffle(body)
        return " ".join(body + sents[-1:])
    if kind == "synonyms":
        for a, b in SYNONYMS.items():
            q = re.sub(rf"\b{a}\b", b, q, flags=re.I)
        return q
    if kind == "lead-in":
        return "Solve this word problem step by step. " + q + " Show your work."
    return edit(edit(edit(q, "numbers", rng), "names", rng), "synonyms", rng)  # all three


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=300)
    args = ap.parse_args()
    rng = random.Random(0)
    idx = NgramIndex(load_benchmark("gsm8k"))
    test = read_rows(shipped_path("gsm8k_test.jsonl.gz"))
    train = read_rows(shipped_path("gsm8k_train.jsonl.gz"))
    sample = rng.sample(test, args.n)
    for kind in ("numbers", "names", "reorder", "synonyms", "lead-in", "numbers+names+synonyms"):
        hits = idx.check_reasons([edit(r["question"], kind, rng) for r in sample])
        print(f"{kind:>24}: {sum(h is not None for h in hits) / len(sample):.1%} caught of {len(sample)}")
    tr = rng.sample(train, 2000)
    flagged = sum(h is not None for h in idx.check_reasons([r["question"] + "\n" + r["answer"] for r in tr]))
    print(f"GSM8K train questions flagged: {flagged} of {len(tr)}")


if __name__ == "__main__":
    main()
