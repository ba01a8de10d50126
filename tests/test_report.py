"""`ilt-audit report`: one self-contained HTML page, checked as text and in a real browser."""

from __future__ import annotations

import base64
import io
import re
import shutil
from dataclasses import dataclass
from html import unescape
from html.parser import HTMLParser
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from browser import load_page
from conftest import tiny_config, write_image_dataset
from PIL import Image

from ilt_audit import report
from ilt_audit.corruption import TRUTH_SCHEMA, corrupt
from ilt_audit.internal.html import templates
from ilt_audit.report import render_report
from ilt_audit.training import train

IMAGE_TASKS = ("colour", "geometry", "seg", "depth")
_DATA_PNG = re.compile(r"^data:image/png;base64,([A-Za-z0-9+/=]+)$")


@dataclass(frozen=True)
class ImageReport:
    run: Path
    truth: Path
    html: str
    path: Path


@pytest.fixture(scope="module")
def image_report(tmp_path_factory: pytest.TempPathFactory) -> ImageReport:
    """A two-epoch run on 12 images with a quarter of three tasks' labels corrupted, reported."""
    root = tmp_path_factory.mktemp("report")
    card = write_image_dataset(root / "clean")
    noisy = corrupt(
        card, tasks=["colour", "seg", "depth"], fraction=0.25, seed=0, out=root / "noisy"
    )
    train(noisy.card_path, root / "run", config=tiny_config(epochs=2))
    path = render_report(root / "run", root / "report.html", truth=noisy.truth_path, top=5)
    return ImageReport(root / "run", noisy.truth_path, path.read_text(encoding="utf-8"), path)


def _sources(html: str) -> list[str]:
    return re.findall(r'<img[^>]*\ssrc="([^"]*)"', html)


def _flagged_rows(html: str, task: str) -> list[str]:
    section = html.split(f'id="task-{task}"', 1)[1].split("</section>", 1)[0]
    table = section.split('<table class="flagged">', 1)[1]
    return re.findall(r"<tr(?: class=\"?suspect\"?)?><td", table)


def test_report_has_a_summary_and_a_section_per_task(image_report):
    html = image_report.html
    assert html.startswith("<!doctype html>")
    assert '<section id="summary">' in html
    for task in IMAGE_TASKS:
        assert f'<section class="task" id="task-{task}">' in html
        assert len(_flagged_rows(html, task)) == 5  # --top 5
    assert str(image_report.run.name) in html


def test_every_image_is_an_inline_png(image_report):
    sources = _sources(image_report.html)
    # the loss curves, two plots per task, and per flagged row an input thumbnail (+ 2 maps when dense)
    assert len(sources) >= 1 + 2 * 4 + 5 * 4 + 2 * 5 * 2
    for source in sources:
        match = _DATA_PNG.match(source)
        assert match, source[:80]
        with Image.open(io.BytesIO(base64.b64decode(match.group(1), validate=True))) as image:
            assert image.format == "PNG"
            assert image.width > 0 and image.height > 0


def test_report_needs_no_network_and_runs_no_script(image_report):
    html = image_report.html
    assert "<script" not in html
    assert not re.search(r"""(src|href)=["']?(https?:|//)""", html)
    assert "default-src 'none'; img-src data:" in html  # the page's own policy forbids the rest


class _Parsed(HTMLParser):
    """A page as the browser reads it: its tags, its text and its attribute values, unescaped."""

    def __init__(self, page: str) -> None:
        super().__init__()
        self.tags: set[str] = set()
        self.text: list[str] = []
        self.attributes: list[str] = []
        self.feed(page)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.add(tag)
        self.attributes += [value for _, value in attrs if value is not None]

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def test_markup_in_ids_labels_and_the_run_folder_is_shown_as_text_everywhere(
    make_image_card, tmp_path, tiny
):
    mark = "<script>alert('x')</script>\"&"
    card = make_image_card(tmp_path / "data")
    table = card.parent / "manifest.csv"
    frame = pd.read_csv(table, dtype=str)
    frame["id"] = frame["id"] + mark
    frame["colour"] = frame["colour"] + mark
    frame.to_csv(table, index=False)
    folder = "run<b>'\"&"  # a folder name cannot hold the mark's "/"
    run = tmp_path / folder
    train(card, run, config=tiny(epochs=1))
    page = render_report(run, tmp_path / "r.html", top=12).read_text(encoding="utf-8")
    assert mark not in page and folder not in page and "<script" not in page
    parsed = _Parsed(page)
    assert parsed.tags <= {
        *("html", "head", "meta", "link", "style", "title", "body", "header", "h1", "h2", "h3"),
        *("p", "section", "dl", "dt", "dd", "code", "span", "table", "thead", "tbody", "tr"),
        *("th", "td", "a", "i", "b", "nav", "div", "figure", "img", "figcaption", "footer"),
    }
    text = "".join(parsed.text)
    assert text.count(f"ilt-audit report: {folder}") == 2  # the title and the heading
    assert text.count(f"ilt-audit gate {run} --format json") == 1
    for row_id in frame["id"]:
        assert row_id in text  # its row of the table
        # a thumbnail's alt and title: the input in each task's table, the mask in one
        assert parsed.attributes.count(f"input of {row_id}") == 2 * len(IMAGE_TASKS)
        assert parsed.attributes.count(f"seg map of {row_id} as labelled") == 2
    assert parsed.text.count(f"red{mark}") == 4  # a cell of the colour table per red label


def test_every_template_escapes_what_it_is_given():
    env = templates()
    assert env.autoescape is True
    assert env.from_string("{{ value }}").render(value="<b>'&") == "&lt;b&gt;&#39;&amp;"
    folder = Path(report.__file__).parent / "templates"
    for template in folder.glob("*.html"):
        source = template.read_text(encoding="utf-8")
        assert not re.search(r"\|\s*safe\b|autoescape\s+false", source), template.name


def test_with_truth_the_report_splits_clean_and_corrupted_and_shows_detection(image_report):
    html = image_report.html
    for header in ("corrupted", "suspects corrupted", "recall of suspects", "AUROC", "AP"):
        assert f">{header}</th>" in html
    assert "split into clean and corrupted labels" in html
    assert "corrupted labels solid red, clean dashed blue" in html


def test_dense_tasks_show_the_labelled_map_and_the_prediction(image_report):
    html = image_report.html
    for task in ("seg", "depth"):
        section = html.split(f'id="task-{task}"', 1)[1].split("</section>", 1)[0]
        assert "<th>label (mask/map)</th><th>prediction</th>" in section
        assert "as labelled" in section
        assert f'alt="predicted {task}' in section


def test_features_report_shows_labels_predictions_and_features(planted_run, tmp_path):
    path = render_report(planted_run.run, tmp_path / "report.html", top=len(planted_run.flipped))
    html = path.read_text(encoding="utf-8")
    section = html.split('id="task-label"', 1)[1].split("</section>", 1)[0]
    for row_id in planted_run.flipped:
        assert f"<code>{row_id}</code>" in section
    predictions = re.findall(r"<td>([abc]) \(\d+%\)</td></tr>", section)  # "b (97%)"
    assert len(predictions) == len(planted_run.flipped)
    assert 'class="features">f0=' in section
    assert "predictions are not shown" not in html


def test_a_run_without_ilt_parameters_is_shown_by_its_loss(features_card, tmp_path, tiny):
    train(features_card, tmp_path / "run", config=tiny(epochs=2, weighting="equal"))
    html = render_report(tmp_path / "run", tmp_path / "r.html").read_text(encoding="utf-8")
    assert "trained with --weighting equal, which has no per-instance log σ²" in html
    assert "loss (log scale)" in html


def test_a_run_without_checkpoint_still_reports_without_predictions(planted_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(planted_run.run, run)
    (run / "checkpoint.pt").unlink()
    html = render_report(run, tmp_path / "r.html").read_text(encoding="utf-8")
    text = unescape(html)
    assert "No checkpoint.pt in the run directory: the model's predictions are not shown." in text
    assert '<section class="task" id="task-label">' in html


def test_report_command_writes_the_page(cli, planted_run, tmp_path):
    out = tmp_path / "report.html"
    result = cli("report", planted_run.run, "--out", out, "--top", "3")
    assert result.exit_code == 0, result.stderr
    assert f"Report: {out}" in result.err
    assert out.read_text(encoding="utf-8").rstrip().endswith("</html>")


def test_report_into_a_missing_folder_is_refused(cli, planted_run, tmp_path):
    out = tmp_path / "missing" / "report.html"
    result = cli("report", planted_run.run, "--out", out)
    assert result.exit_code == 2
    assert f"the folder {out.parent} does not exist" in result.err
    assert not out.parent.exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--top", "0"], "--top must be at least 1, got 0"),
        (["--truth", "missing.parquet"], "missing.parquet: corruption file not found"),
        (["--by", "nope"], "unknown score 'nope'"),
    ],
)
def test_report_bad_input_exits_2_and_writes_nothing(cli, planted_run, tmp_path, args, message):
    out = tmp_path / "report.html"
    result = cli("report", planted_run.run, "--out", out, *args)
    assert result.exit_code == 2
    assert f"Error: {message}" in result.err
    assert not out.exists()


def test_report_of_something_that_is_not_a_run_exits_2(cli, tmp_path):
    result = cli("report", tmp_path, "--out", tmp_path / "r.html")
    assert result.exit_code == 2
    assert "not a run directory" in result.err


def test_report_renders_in_a_real_browser(image_report, tmp_path):
    page = load_page(image_report.path, tmp_path)
    assert page.errors == [], page.log[-2000:]
    assert len(page.images) == len(_sources(image_report.html))
    assert page.broken_images == []
    assert all(image["width"] > 0 for image in page.images)


# --- large runs: the plots come from a sample, read with an id filter ---------------------------


def test_plots_of_a_large_task_come_from_a_seeded_sample_and_the_page_says_so(
    planted_run, tmp_path, monkeypatch
):
    calls = []
    original = report.read_matrix

    def spy(run_dir, column, **filters):
        calls.append(filters)
        return original(run_dir, column, **filters)

    monkeypatch.setattr(report, "read_matrix", spy)
    monkeypatch.setattr(report, "PLOT_SAMPLE", 10)
    first = render_report(planted_run.run, tmp_path / "a.html", top=3).read_text(encoding="utf-8")
    assert "drawn from a random sample of the instances (at most 10 per group, seed 0" in first
    assert "all: 10 of 60" in first
    (read,) = calls  # one read of the plotted instances' trajectories, by id
    ids = set(read["ids"].to_pylist())
    assert len(ids) < 60  # 10 sampled per task and the top 3 of each, not every instance
    assert ids >= {"r003", "r008"}  # a flipped and a shifted label, ranked on top
    again = render_report(planted_run.run, tmp_path / "b.html", top=3).read_text(encoding="utf-8")
    assert _sources(again)[1:] == _sources(first)[1:]  # the same sample, so the same figures


def test_a_task_small_enough_is_plotted_whole_without_a_note(image_report, planted_run, tmp_path):
    assert "random sample" not in image_report.html
    html = render_report(planted_run.run, tmp_path / "r.html").read_text(encoding="utf-8")
    assert "random sample" not in html


def test_with_a_truth_file_clean_and_corrupted_labels_are_sampled_apart(
    planted_run, tmp_path, monkeypatch
):
    ids = [f"r{i:03d}" for i in range(60)]
    truth = tmp_path / "corruption.parquet"
    corrupted = [i in planted_run.flipped for i in ids]
    pq.write_table(pa.table([ids, ["label"] * 60, corrupted], schema=TRUTH_SCHEMA), truth)
    monkeypatch.setattr(report, "PLOT_SAMPLE", 10)
    path = render_report(planted_run.run, tmp_path / "r.html", truth=truth, top=3)
    section = path.read_text(encoding="utf-8").split('id="task-label"', 1)[1].split("</section>")[0]
    assert "all: 10 of 60; clean: 10 of 55; corrupted: 5 of 5" in section


def test_a_label_file_gone_after_training_is_one_error_naming_row_and_column(
    make_image_card, tmp_path, tiny, cli
):
    card = make_image_card(tmp_path / "data")
    run = tmp_path / "run"
    train(card, run, config=tiny(epochs=1))
    (run / "checkpoint.pt").unlink()  # the page then reads every shown label file itself
    for mask in (card.parent / "masks").glob("*.png"):
        mask.write_bytes(b"not a png")
    result = cli("report", run, "--out", tmp_path / "r.html", "--top", "12")
    assert result.exit_code == 2, result.stderr
    assert result.err.count("Error:") == 1 and "Traceback" not in result.err
    assert "column 'mask': cannot read its file" in result.err
    assert not (tmp_path / "r.html").exists()
