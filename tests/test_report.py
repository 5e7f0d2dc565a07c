"""The HTML run report: every run writes a self-contained report.html; `synthflow
report --recipe` draws a recipe's runs over time; bad input is one line and exit 2."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from .browser import assert_drawn, render
from .conftest import DATA, fake_recipe, math_recipe, run_cli
from .helpers import expected_figures, run_local


def _self_contained(text: str) -> None:
    assert "<script" not in text.lower()
    # no resource is fetched: no src= or href= to the network (SVG namespaces are not fetches)
    assert not re.search(r"""(?:src|href)\s*=\s*["']https?:""", text)
    assert len(text) < 5 * 2**20


def test_every_run_writes_a_report_with_its_plots(tmp_path, monkeypatch):
    price = {"prompt": 1.0, "completion": 2.0}  # per million tokens
    recipe = math_recipe(tmp_path, n=6, batch_size=16, max_items=64, engine__price_per_mtok=price)
    s = run_local(recipe, tmp_path / "out", tmp_path / "c.sqlite3", monkeypatch)
    text = (Path(s["path"]) / "report.html").read_text()
    _self_contained(text)
    money = s["tokens"]["prompt"] / 1e6 * 1.0 + s["tokens"]["completion"] / 1e6 * 2.0
    assert f"<td>cost (price_per_mtok)</td><td>{round(money, 4)}</td>" in text
    for title in ("Funnel and rejects", "Scores", "Token lengths", "Coverage", "Dedup and decontamination", "Cost",
                  "Sample rows"):  # fmt: skip
        assert f">{title}</h2>" in text
    # the funnel, a histogram per score with enough distinct values, and two token-length plots;
    # a score that is one value on every row is a table line, not a bar that looks like a violation
    assert text.count('<figure class="plot">') == expected_figures(Path(s["path"])) >= 4
    assert "<td>score_non_ascii</td><td>constant 0 (" in text
    assert "<td>score_finished</td><td>constant 1 (" in text
    assert "threshold" in text  # the recipe's thresholds are drawn on their scores
    assert "engine seconds per accepted row" in text


def test_skillmix_report_shows_skill_coverage(tmp_path, monkeypatch):
    recipe = fake_recipe(tmp_path, "skillmix", "fake_skillmix.json", n=3, batch_size=4, max_items=8,
                         scoring__judge__sample=1.0)  # fmt: skip
    s = run_local(recipe, tmp_path / "out", tmp_path / "c.sqlite3", monkeypatch)
    text = (Path(s["path"]) / "report.html").read_text()
    assert s["counts"]["accepted"] > 0
    assert "SkillMix: skills in accepted rows" in text and "SkillMix: skill x skill pairs" in text
    assert text.count('<figure class="plot">') == expected_figures(Path(s["path"]))


def test_report_renders_in_headless_chromium(tmp_path, monkeypatch):
    """Every plot of a SkillMix run's report is drawn by a real browser, with no console errors and
    no request leaving the file."""
    recipe = fake_recipe(tmp_path, "skillmix", "fake_skillmix.json", n=3, batch_size=4, max_items=8,
                         scoring__judge__sample=1.0)  # fmt: skip
    s = run_local(recipe, tmp_path / "out", tmp_path / "c.sqlite3", monkeypatch)
    run_dir = Path(s["path"])
    shot = tmp_path / "report.png"
    result = render(run_dir / "report.html", screenshot=shot)
    assert_drawn(result, expected_figures(run_dir))
    assert shot.stat().st_size > 10_000


def test_a_broken_page_fails_the_browser_check(tmp_path):
    """The browser check can fail: a script error, a figure without its SVG and a remote image."""
    page = tmp_path / "bad.html"
    page.write_text(
        '<html><body><figure class="plot"><svg width="200" height="100"><rect width="200" height="100"/></svg>'
        '</figure><figure class="plot"></figure><img src="http://127.0.0.1:9/x.png">'
        "<script>undefinedFunction()</script></body></html>"
    )
    result = render(page)
    assert len(result["figures"]) == 2 and not result["figures"][1]["svg"]
    assert any("undefinedFunction" in e for e in result["errors"])
    assert result["requests"] == ["http://127.0.0.1:9/x.png"]
    with pytest.raises(AssertionError):
        assert_drawn(result, 2)


def test_report_across_runs_and_bad_input(tmp_path, monkeypatch):
    recipe = math_recipe(tmp_path, n=2, batch_size=8, max_items=16)
    out = tmp_path / "out"
    for _ in range(3):  # each run continues the sample stream: three runs, three points
        run_local(recipe, out, tmp_path / "c.sqlite3", monkeypatch)
    p = run_cli("report", "--recipe", "math", "--root", str(out))
    assert p.returncode == 0, p.stderr
    text = (out / "math-report.html").read_text()
    _self_contained(text)
    assert text.count("<svg") == 4 and text.count("<tr>") == 1 + 3  # 4 trend plots; a table row per run
    bad = run_cli("report", str(tmp_path))
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1 and "_SUCCESS" in bad.stderr
    fake = tmp_path / "fake_run"  # _SUCCESS and a summary, but no data/: not a run
    fake.mkdir()
    (fake / "_SUCCESS").touch()
    (fake / "summary.json").write_text("{}")
    nodata = run_cli("report", str(fake))
    assert (
        nodata.returncode == 2 and "no data/ folder" in nodata.stderr and not (fake / "report.html").exists()
    )
    unknown = run_cli("report", "--recipe", "nope", "--root", str(out))
    assert unknown.returncode == 2 and "no finished runs" in unknown.stderr and "math" in unknown.stderr


def test_reject_examples_are_escaped_once():
    from synthflow.report import run_sections

    rej = [{"reject_stage": "parse", "reject_reason": "parse:no_answer", "raw": "a bicycle's <tyre>"}]
    funnel = dict(run_sections({"summary": {}, "data": [], "rejects": rej, "recipe": {}}))[
        "Funnel and rejects"
    ]
    assert "a bicycle&#x27;s &lt;tyre&gt;" in funnel and "&amp;" not in funnel


def test_a_small_bonito_run_gets_tables_and_task_type_coverage(tmp_path, monkeypatch):
    """A run with a handful of rows: scores as a table (no histograms of 2 points), and coverage of
    Bonito's task types (the report used to say "No coverage columns")."""
    recipe = fake_recipe(tmp_path, "bonito", "fake_bonito.json", n=4, batch_size=8, max_items=16,
                         seeds=[{"source": "docs", "path": str(DATA / "docs"), "chunk_words": 200}])  # fmt: skip
    s = run_local(recipe, tmp_path / "out", tmp_path / "c.sqlite3", monkeypatch)
    text = (Path(s["path"]) / "report.html").read_text()
    assert 0 < s["counts"]["accepted"] < 10
    assert "task types" in text and "No coverage columns" not in text
    assert "Scores with fewer than 10 values" in text and "<td>score_ifd</td>" in text
    assert text.count('<figure class="plot">') == expected_figures(Path(s["path"]))
