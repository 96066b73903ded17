"""The front page (claimsutil.frontpage) from a small reports folder, and the browser check on it."""

from __future__ import annotations

import datetime as dt
import json
import shutil

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import polars as pl  # noqa: E402
import pytest  # noqa: E402
from conftest import ROOT  # noqa: E402

from claimsutil import browser, frontpage, report  # noqa: E402
from claimsutil.config import load_params  # noqa: E402


def _figure(stem):
    fig, ax = plt.subplots(figsize=(3, 2))
    ax.plot([1, 2, 3], [3, 1, 2])
    report.save_figure(fig, stem)
    plt.close(fig)


@pytest.fixture
def reports(tmp_path):
    """A reports folder as the stages lay it out, with a few tables and figures, and their metrics."""
    root, metrics = tmp_path / "reports", tmp_path / "metrics"
    report.write_table(pl.DataFrame({"task": ["hypertension", "ckd"], "budget": [100, 100], "auprc": [0.31, 0.12],
                                     "saturation_scale": ["s", "xs"]}), root / "tables" / "saturation")  # fmt: skip
    report.write_table(pl.DataFrame({"model": [f"m{i}" for i in range(60)], "auprc": [i / 100 for i in range(60)]}),
                       root / "tables" / "downstream_all_models")  # fmt: skip
    report.write_table(pl.DataFrame({"name": ["<b>x</b>"], "auprc": [1.5]}), root / "baseline" / "extra")
    report.write_table(pl.DataFrame({"a": ["z"]}), root / "new_stage" / "unclaimed")  # no section names it
    _figure(root / "figures" / "figure2_pretraining")
    _figure(root / "laws" / "isoflop")
    _figure(root / "new_stage" / "figures" / "novel")
    for name in frontpage.notebook_reports(load_params(ROOT / "params.yaml")):
        (root / name).write_text("<html></html>")
    metrics.mkdir()
    (metrics / "scaling.json").write_text(json.dumps({"findings": ["hypertension saturates at <s>."],
                                                      "zeroshot_findings": ["zero-shot trails."]}))  # fmt: skip
    (metrics / "synthesize.json").write_text(json.dumps({"patients": 130000, "events": 9100000,
                                                         "events_per_patient": 70.0, "shards": 4}))  # fmt: skip
    (metrics / "splits.json").write_text(json.dumps({"train": 80000, "validation": 17000, "test": 17000,
                                                     "held_out_hospital": 16000, "held_out_hospitals": ["H03"],
                                                     "split_source": "the study's hashed rule"}))  # fmt: skip
    (metrics / "laws.json").write_text(json.dumps({"runs": 14, "budgets": 3, "E": 8.4, "frequency_baseline": 10.0,
                                                   "alpha": 3.0, "alpha_interval": [1.98, 3.0], "beta": 0.37,
                                                   "a_isoflop": None, "a_surface": 0.11, "vertices_inside_sizes": 1,
                                                   "degenerate_exponents": ["alpha"]}))  # fmt: skip
    return root, metrics


def test_front_page_shows_every_table_and_figure_and_the_run(reports):
    root, metrics = reports
    params = load_params(ROOT / "params.yaml")
    page = frontpage.write_front_page(root, params, metrics, dt.date(2026, 12, 7)).read_text()
    # The run at the top: profile, date, data, patients and how they were split.
    assert f"<dt>Profile</dt><dd>{params.profile}</dd>" in page and "<dd>2026-12-07</dd>" in page
    assert "130,000 (train 80,000, validation 17,000, test 17,000, held-out hospitals 16,000)" in page
    assert "synthetic" in page and "splits: the study&#x27;s hashed rule" in page
    # Findings in sentences, escaped; the laws' fit in words, its degenerate exponent said.
    assert "hypertension saturates at &lt;s&gt;." in page and "zero-shot trails." in page
    assert "α = 3.00 (95% bootstrap interval 1.98-3.00)" in page and "not measured by this grid: alpha" in page
    assert "The transfer stage has not written its findings (transfer.json is missing" in page
    # Tables as HTML (numbers right-aligned, cells escaped), long ones folded; each links its CSV and Markdown.
    assert "<td>hypertension</td><td class=num>100</td><td class=num>0.31</td>" in page
    assert "<td>&lt;b&gt;x&lt;/b&gt;</td>" in page
    assert "<details><summary>downstream all models: 60 rows, 2 columns" in page
    assert "href='tables/saturation.csv'" in page and "href='tables/saturation.md'" in page
    # Every figure inline, linking its SVG; what no section claims is still shown.
    for png in ("figures/figure2_pretraining.png", "laws/isoflop.png", "new_stage/figures/novel.png"):
        assert f"<a href='{png[:-4]}.svg'><img src='{png}'" in page
    assert "<section id='other'>" in page and "unclaimed (new_stage)" in page
    assert page.count("<img ") == 3
    # Every notebook, per scale.
    for scale in params.scales:
        assert f"href='04_finetune-{scale}.html'" in page and f"href='08_zeroshot-{scale}.html'" in page


def test_front_page_stage_entry_point(reports, capsys):
    root, metrics = reports
    assert frontpage.main(["--params", str(ROOT / "params.yaml"), "--reports", str(root), "--metrics",
                           str(metrics)]) == 0  # fmt: skip
    assert (root / "index.html").is_file() and "wrote" in capsys.readouterr().out
    assert frontpage.main(["--params", str(root / "missing.yaml"), "--reports", str(root)]) == 2
    assert "error:" in capsys.readouterr().err


def test_the_browser_check_sees_what_a_reader_sees(reports, tmp_path, chromium):
    root, metrics = reports
    frontpage.write_front_page(root, load_params(ROOT / "params.yaml"), metrics)
    check = browser.check_page(root / "index.html", tmp_path / "shot.png")
    assert check.ok and len(check.images) == 3 and all(w > 100 and h > 50 for _, w, h in check.images)
    assert check.tables == 4 and check.pdf_pages >= 1 and (tmp_path / "shot.png").stat().st_size > 10_000
    # A missing figure, a missing notebook and a dangling anchor are each caught.
    (root / "laws" / "isoflop.png").unlink()
    (root / "05_baseline.html").unlink()
    page = (root / "index.html").read_text().replace("href='#reference'", "href='#nowhere'")
    (root / "index.html").write_text(page)
    broken = browser.check_page(root / "index.html")
    assert not broken.ok and broken.broken_images == ["laws/isoflop.png"]
    assert any("05_baseline.html: no such file" in b for b in broken.broken_links)
    assert any("no element with id 'nowhere'" in b for b in broken.broken_links)
    assert browser.main([str(root / "index.html")]) == 1


def test_the_browser_check_says_what_to_install(monkeypatch, tmp_path, capsys):
    monkeypatch.delenv("CHROMIUM", raising=False)
    monkeypatch.delenv("CHROMEDRIVER", raising=False)
    monkeypatch.setattr(shutil, "which", lambda name: None)
    page = tmp_path / "index.html"
    page.write_text("<html></html>")
    assert browser.main([str(page)]) == 2
    assert "apt-get install chromium chromium-driver" in capsys.readouterr().err
