"""Generation overhead: the pipeline's generate stage vs raw ``vllm.LLM.chat(all prompts)``.

Same process, same loaded model, same prompts, same sampling. The pipeline path renders the
templates, checks and fills the response cache (a fresh, empty one: every prompt is a miss),
calls the engine once for the batch, and parses. Rounds alternate which path goes first and reset vLLM's prefix cache before each call; the figure is the
ratio of output tokens/s (pipeline / raw), target >= 0.95.

    .venv/bin/python bench/generation_overhead.py [--prompts 128] [--rounds 2]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prompts", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--max-tokens", type=int, default=200)
    a = ap.parse_args()

    os.environ["SYNTHFLOW_PROGRESS"] = "0"
    from synthflow.engines.base import Sampling
    from synthflow.engines.cache import CachedEngine, ResponseCache
    from synthflow.recipe import load_recipe
    from synthflow.registry import get
    from synthflow.seeds import extract_seeds

    recipe = load_recipe(ROOT / "recipes" / "math.yaml", {"sampling.max_tokens": a.max_tokens})
    gen = get("generator", recipe.generator.name)(recipe, extract_seeds(recipe.seeds))
    engine = get("engine", "vllm")(recipe.engine)
    engine.show_progress = False
    engine.start()  # loads vllm.LLM once; both paths use this same object
    llm = engine.llm
    from vllm import SamplingParams

    sampling = Sampling(recipe.sampling.temperature, recipe.sampling.top_p, a.max_tokens, recipe.engine.seed)
    sp = SamplingParams(temperature=sampling.temperature, top_p=sampling.top_p, max_tokens=a.max_tokens)

    raw_tps, pipe_tps = [], []

    def run_raw(rnd: int, convs: list) -> None:
        llm.reset_prefix_cache()  # both paths start with a cold prefix cache
        t0 = time.perf_counter()
        outs = llm.chat(convs, sp, use_tqdm=False, add_generation_prompt=False, continue_final_message=True)
        dt = time.perf_counter() - t0
        toks = sum(len(o.outputs[0].token_ids) for o in outs)
        raw_tps.append(toks / dt)
        print(
            json.dumps(
                {
                    "round": rnd,
                    "path": "raw vllm.LLM.chat",
                    "prompts": len(convs),
                    "output_tokens": toks,
                    "seconds": round(dt, 2),
                    "tok_s": round(toks / dt, 1),
                }
            )
        )

    def run_pipeline(rnd: int, items: list) -> None:
        llm.reset_prefix_cache()
        with tempfile.TemporaryDirectory() as tmp:
            cached = CachedEngine(engine, ResponseCache(Path(tmp) / "c.sqlite3"))
            cached._started = True
            t0 = time.perf_counter()
            res = gen.generate(items, cached, sampling)
            dt = time.perf_counter() - t0
            toks = cached.completion_tokens
            pipe_tps.append(toks / dt)
            print(
                json.dumps(
                    {
                        "round": rnd,
                        "path": "pipeline generate stage",
                        "prompts": len(items),
                        "parsed": len(res.kept),
                        "output_tokens": toks,
                        "seconds": round(dt, 2),
                        "tok_s": round(toks / dt, 1),
                        "cache_misses": cached.misses,
                    }
                )
            )
            cached.cache.close()

    for rnd in range(a.rounds):
        items = gen.plan(rnd * a.prompts, a.prompts)
        convs = [gen.templates["generate"].render(**gen.context(it)) for it in items]
        # the same prompts through both paths; the order alternates so neither always goes first
        if rnd % 2 == 0:
            run_raw(rnd, convs)
            run_pipeline(rnd, items)
        else:
            run_pipeline(rnd, items)
            run_raw(rnd, convs)

    raw, pipe = statistics.median(raw_tps), statistics.median(pipe_tps)
    print(
        f"raw vllm.LLM.chat: {raw:.1f} output tok/s | pipeline generate stage: {pipe:.1f} output tok/s | ratio {pipe / raw:.3f} (target >= 0.95)"
    )
    engine.close()


if __name__ == "__main__":
    main()
