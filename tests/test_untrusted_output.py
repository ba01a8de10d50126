"""Ids and labels are untrusted text in every output: JUnit XML, Markdown, HTML, CSV, terminal.

One run whose every id carries markup, an HTML tag, a formula start, Markdown punctuation and a
control character goes through `gate` (JUnit, Markdown, CSV, JSON), `rank` and `report`: each
output parses, shows the id as text, and runs nothing.
"""

from __future__ import annotations

import html
import json
import re
import xml.etree.ElementTree as ET

import numpy as np
import pandas as pd
import pytest

from ilt_audit.run.trajectories import write_epoch
from ilt_audit.training.loop import train


def hostile(i: int) -> str:
    return f"=1+{i}<script>alert({i})</script>[bold]|`x`\x1b]]>&amp;"


@pytest.fixture
def hostile_run(make_features_card, tmp_path, tiny):
    card = make_features_card(tmp_path / "data", flip=("r003", "r017"))
    table = card.parent / "manifest.csv"
    frame = pd.read_csv(table, dtype={"id": str})
    frame["id"] = [hostile(i) for i in range(len(frame))]
    frame.to_csv(table, index=False)
    run = tmp_path / "run"
    train(card, run, config=tiny(epochs=2))
    # the last epoch's log σ²: clean ones close together, two far above them (suspects)
    ids = frame["id"].tolist()
    log_sigma2 = np.random.default_rng(0).normal(-3.0, 0.3, size=(len(ids), 2))
    log_sigma2[[3, 17], 0] = 2.0
    write_epoch(run, 2, ids, ["label", "target"], log_sigma2, np.exp(log_sigma2))
    return run


def test_junit_parses_and_holds_no_control_character(hostile_run, cli, tmp_path):
    xml = tmp_path / "gate.xml"
    result = cli("gate", hostile_run, "--max-suspect", "0", "--junit", xml)
    assert result.exit_code in (0, 1), result.stderr
    root = ET.parse(xml).getroot()  # raises on a control character or a broken tag
    failures = [f.text or "" for f in root.iter("failure")]
    assert failures, "the gate with --max-suspect 0 fails and lists suspects"
    text = "\n".join(failures)
    assert "<script>alert(" in text  # the id, as text, after the XML escaping is undone
    assert "\x1b" not in xml.read_text(encoding="utf-8")


def test_markdown_summary_escapes_every_id(hostile_run, cli, tmp_path):
    md = tmp_path / "gate.md"
    result = cli("gate", hostile_run, "--max-suspect", "0", "--summary", md)
    assert result.exit_code in (0, 1), result.stderr
    text = md.read_text(encoding="utf-8")
    assert "<script>" not in text and "&lt;script&gt;" in text
    rows = [line for line in text.splitlines() if "&lt;script&gt;" in line]
    assert rows and all(line.count(" | ") == 3 for line in rows)  # a `|` in an id stays in its cell


def test_csv_neutralises_and_json_keeps_ids_as_written(hostile_run, cli, tmp_path):
    out = tmp_path / "suspects.csv"
    result = cli("rank", hostile_run, "--format", "csv", "--output", out)
    assert result.exit_code == 0, result.stderr
    ids = pd.read_csv(out, dtype={"id": str}).id
    assert ids.str.startswith("'=1+").all()  # no live formula
    listed = json.loads(cli("rank", hostile_run, "--format", "json").out)
    assert {row["id"] for row in listed} >= {hostile(3), hostile(17)}


def test_terminal_table_prints_markup_as_text(hostile_run, cli):
    result = cli("rank", hostile_run, "--top", "2")
    assert result.exit_code == 0, result.stderr
    assert "[bold]" in result.out


def test_report_shows_ids_as_text_and_runs_no_script(hostile_run, cli, tmp_path):
    page = tmp_path / "report.html"
    result = cli("report", hostile_run, "--out", page, "--top", "3")
    assert result.exit_code == 0, result.stderr
    text = page.read_text(encoding="utf-8")
    assert not re.search(r"<script>alert", text)
    assert html.escape("<script>alert(") in text
