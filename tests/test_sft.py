"""SFT validation: every published row has n_tokens under the target tokenizer's
chat template, and a row that does not fit max_seq_len is a reject `sft:too_long`."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from filters.sft import SFTCheck, SFTParams
from synthflow.errors import UserError
from synthflow.filtering import FilterContext
from synthflow.model import default_model_dir
from synthflow.record import Record

from .conftest import math_recipe
from .helpers import run_flow, run_local


def _rec(i: int, user: str, assistant: str) -> Record:
    return Record(
        id=f"r{i}",
        recipe="t",
        generator="g",
        seed_id="s",
        messages=[{"role": "user", "content": user}, {"role": "assistant", "content": assistant}],
    )


def test_lengths_follow_the_chat_template_and_long_rows_are_rejects():
    from transformers import AutoTokenizer

    f = SFTCheck(SFTParams(max_seq_len=40), FilterContext())
    short, long = _rec(0, "What is 2+2?", "4"), _rec(1, "Explain.", "word " * 100)
    res = f([short, long, _rec(2, "x", "")])
    tok = AutoTokenizer.from_pretrained(str(default_model_dir()))
    expected = len(tok.apply_chat_template(short.messages, tokenize=True, return_dict=True)["input_ids"])
    assert short.fields["n_tokens"] == expected and short.fields["fits_context"] is True
    assert [j.record.id for j in res.rejects] == ["r1"]
    assert res.rejects[0].reason.startswith("sft:too_long (") and long.fields["fits_context"] is False
    assert f.summary()["too_long"] == 1 and f.summary()["tokenizer"] == str(default_model_dir())


def test_the_tokenizer_is_the_one_autotokenizer_loads():
    """``load_tokenizer`` takes the class a local folder names instead of importing AutoTokenizer's
    machinery: the same class and the same ids under the chat template (system turn, several turns,
    non-ASCII, an empty answer)."""
    from transformers import AutoTokenizer

    from filters.sft import load_tokenizer

    name = str(default_model_dir())
    ours, auto = load_tokenizer(name), AutoTokenizer.from_pretrained(name)
    assert type(ours) is type(auto)
    convs = [
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Héllo, 2+2?"},
         {"role": "assistant", "content": "4 — ok ✓"}],
        [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}, {"role": "user", "content": "c"},
         {"role": "assistant", "content": ""}],
    ]  # fmt: skip
    for conv in convs:
        want = auto.apply_chat_template(conv, tokenize=True, return_dict=True)["input_ids"]
        assert ours.apply_chat_template(conv, tokenize=True, return_dict=True)["input_ids"] == want


def test_a_row_without_messages_is_a_template_error():
    f = SFTCheck(SFTParams(), FilterContext())
    r = Record(id="r", recipe="t", generator="g", seed_id="s", messages=[])
    res = f([r])
    assert [j.reason.split(":")[:2] for j in res.rejects] == [["sft", "template_error"]]


def test_a_missing_tokenizer_folder_is_one_line(tmp_path):
    with pytest.raises(UserError, match=r"output.target_tokenizer: .* is not a tokenizer folder"):
        SFTCheck(SFTParams(tokenizer=str(tmp_path / "nope")), FilterContext())


def test_every_published_row_has_n_tokens_and_long_ones_are_rejects(tmp_path, monkeypatch):
    ok = math_recipe(tmp_path, n=6, batch_size=16, max_items=64)
    s = run_local(ok, tmp_path / "ok", tmp_path / "ok.sqlite3", monkeypatch)
    data = pq.read_table(next((Path(s["path"]) / "data").glob("*.parquet")))
    lengths = data.column("n_tokens").to_pylist()
    assert lengths and all(isinstance(n, int) and n > 0 for n in lengths)
    assert all(data.column("fits_context").to_pylist())
    card = (Path(s["path"]) / "README.md").read_text()
    assert "## Token lengths" in card
    # the card travels: the embedded model and its tokenizer by HF id, no local path
    assert "chat template of `HuggingFaceTB/SmolLM2-135M-Instruct`" in card
    assert str(default_model_dir()) not in card and str(Path.home()) not in card

    assert s["filters"]["sft"]["max_seq_len"] == 2048
    # the same rows against a limit below the shortest: every row that reached the step is too long
    limit = min(lengths) - 1
    tight = math_recipe(
        tmp_path, name="tight.yaml", n=6, batch_size=16, max_items=64, output__max_seq_len=limit
    )
    t = run_local(tight, tmp_path / "tight", tmp_path / "tight.sqlite3", monkeypatch)
    assert t["counts"]["accepted"] == 0
    rej = pq.read_table(next((Path(t["path"]) / "rejects").glob("*.parquet"))).to_pylist()
    too_long = [r for r in rej if r["reject_reason"].startswith("sft:too_long")]
    assert len(too_long) >= len(lengths) and all(r["n_tokens"] > limit for r in too_long)
    assert json.loads((Path(t["path"]) / "summary.json").read_text())["filters"]["sft"]["too_long"] == len(
        too_long
    )


def test_the_prefect_run_has_a_progress_artifact_updated_per_batch(tmp_path, prefect_harness, monkeypatch):
    from prefect.client.orchestration import get_client

    from flows.recipe_flow import run_recipe

    recipe = math_recipe(tmp_path, n=6, batch_size=16, max_items=64)
    s = run_flow(run_recipe, recipe, tmp_path / "out", tmp_path / "c.sqlite3", monkeypatch)
    with get_client(sync_client=True) as client:
        arts = [a for a in client.read_artifacts() if a.type == "progress" and a.key == "math-progress"]
    assert arts, "no progress artifact"
    latest = max(arts, key=lambda a: a.updated or a.created)
    assert float(latest.data) == pytest.approx(100.0 * min(1.0, s["counts"]["accepted"] / 6))
    assert f"accepted {s['counts']['accepted']} of 6" in latest.description


def test_cards_name_models_by_what_other_machines_can_find(tmp_path):
    from synthflow.model import public_model_name

    assert public_model_name("default") == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert public_model_name(str(default_model_dir())) == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert public_model_name("Qwen/Qwen2.5-0.5B-Instruct") == "Qwen/Qwen2.5-0.5B-Instruct"
    (tmp_path / "ft").mkdir()
    (tmp_path / "ft" / "config.json").write_text('{"_name_or_path": "org/base-model"}')
    assert public_model_name(str(tmp_path / "ft")) == "org/base-model"
    (tmp_path / "mine").mkdir()
    assert public_model_name(str(tmp_path / "mine")) == "mine (a local folder)"
