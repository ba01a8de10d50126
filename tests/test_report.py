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

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from browser import load_page
from conftest import CLASSES, tiny_config, write_image_dataset
from PIL import Image

from ilt_audit.corruption.planting import TRUTH_SCHEMA, corrupt
from ilt_audit.review import report
from ilt_audit.review.instances import EXTRA_COLOUR, MISSING_COLOUR
from ilt_audit.review.pages import templates
from ilt_audit.review.report import render_report
from ilt_audit.training.loop import train

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
    predictions = re.findall(r"<td>([abc]) \(\d+%\)</td><td class=\"why\">", section)  # b (97%)
    assert len(predictions) == len(planted_run.flipped)
    assert 'class="features">f0=' in section
    assert "predictions are not shown" not in html


# --- why a label is suspect ---------------------------------------------------------------------


def _cells(section: str, row_id: str) -> list[str]:
    """The text of each cell of a flagged row, unescaped, pictures left out."""
    row = section.split(f"<code>{row_id}</code>", 1)[1].split("</tr>", 1)[0]
    return [unescape(re.sub(r"<[^>]+>", "", c)) for c in row.split("</td>")]


def _why(section: str, row_id: str) -> str:
    row = section.split(f"<code>{row_id}</code>", 1)[1].split("</tr>", 1)[0]
    return unescape(re.sub(r"<[^>]+>", "", row.split('<td class="why">', 1)[1]))


def _section(html: str, task: str) -> str:
    return html.split(f'id="task-{task}"', 1)[1].split("</section>", 1)[0]


@pytest.fixture(scope="module")
def planted_report(planted_run, tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("why") / "report.html"
    return render_report(planted_run.run, path, top=8).read_text(encoding="utf-8")


def test_a_flipped_label_shows_the_class_the_network_prefers_and_its_probability(
    planted_run, planted_report
):
    section = _section(planted_report, "label")
    given = pd.read_csv(planted_run.card.parent / "manifest.csv", dtype=str).set_index("id")
    for row_id in planted_run.flipped:
        why = _why(section, row_id)
        found = re.fullmatch(
            r"the network prefers ([abc]) \((>?)(\d+)%\) over the label ([abc]) .*", why
        )
        assert found, why
        label = given.loc[row_id, "label"]
        assert found.group(4) == label
        assert found.group(1) == CLASSES[(CLASSES.index(label) - 1) % 3]  # the true class
        assert int(found.group(3)) > 50
        assert float(_cells(section, row_id)[1]) > 0.5  # p_wrong


def test_a_shifted_target_shows_a_residual_far_above_the_tasks_typical_label(
    planted_run, planted_report
):
    section = _section(planted_report, "target")
    for row_id in planted_run.shifted:
        why = _why(section, row_id)
        found = re.match(
            r"far from the prediction: ([\d.]+) label SDs from the network's prediction "
            r"\(typical label: ([\d.e-]+) SD\) · label − prediction now: y0 \+([\d.]+), y1 ",
            why,
        )
        assert found, why
        assert float(found.group(1)) > 10 * float(found.group(2))
        assert float(found.group(3)) > 4  # the target was moved by 8, in the data's units


def test_the_summary_shows_each_tasks_estimated_error_rate_with_its_interval(
    planted_run, planted_report
):
    summary = planted_report.split('<table class="tasks">', 1)[1].split("</table>", 1)[0]
    assert '<th class="num">est. error rate</th><th class="num">95% interval</th>' in summary
    for task, planted in (("label", planted_run.flipped), ("target", planted_run.shifted)):
        row = summary.split(f'href="#task-{task}"', 1)[1].split("</tr>", 1)[0]
        cells = re.findall(r'<td class="num">([^<]*)</td>', row)
        estimate, interval = float(cells[4].rstrip("%")), cells[5]
        low, high = (float(v.rstrip("%")) for v in interval.split("–"))
        assert low <= estimate <= high
        assert abs(estimate - 100 * len(planted) / 60) < 8


def test_a_flagged_mask_shows_where_the_network_and_the_label_disagree(image_report):
    section = _section(image_report.html, "seg")
    assert "Where the network's mask and the label disagree, outlined on the input" in section
    pictures = re.findall(
        r'<td class="why">[^<]*<img class="thumb" src="data:image/png;base64,([^"]+)" '
        r'alt="where the network and the seg mask of [^"]+ disagree"',
        section,
    )
    assert len(pictures) == 5  # one per flagged row (--top 5)
    for picture in pictures:
        with Image.open(io.BytesIO(base64.b64decode(picture))) as image:
            colours = {tuple(c) for _, c in image.convert("RGB").getcolors(1 << 16)}
        # a two-epoch network disagrees with every mask somewhere, in one colour or the other
        assert colours & {MISSING_COLOUR, EXTRA_COLOUR}


LEFT_OUT = ("m03", "m11", "m19")  # masks that leave their object out


def _squares(folder: Path, n: int = 40, seed: int = 0) -> Path:
    """A learnable mask task: a yellow square on each 16x16 image, marked 1 in its mask, except
    in the :data:`LEFT_OUT` masks, which leave it out."""
    for sub in ("images", "masks"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        row_id = f"m{i:02d}"
        image = np.full((16, 16, 3), 20, np.uint8)
        mask = np.zeros((16, 16), np.uint8)
        top, left = (int(v) for v in rng.integers(0, 10, 2))
        image[top : top + 6, left : left + 6] = (230, 230, 40)
        mask[top : top + 6, left : left + 6] = 0 if row_id in LEFT_OUT else 1
        Image.fromarray(image).save(folder / "images" / f"{row_id}.png")
        Image.fromarray(mask).save(folder / "masks" / f"{row_id}.png")
        rows.append({"id": row_id, "image": f"images/{row_id}.png", "mask": f"masks/{row_id}.png"})
    pd.DataFrame(rows).to_csv(folder / "manifest.csv", index=False)
    card = folder / "card.toml"
    card.write_text(
        'table = "manifest.csv"\nid = "id"\n[input]\ntype = "image"\ncolumn = "image"\n'
        '[tasks.seg]\ntype = "segmentation"\ncolumn = "mask"\nclasses = 2\n',
        encoding="utf-8",
    )
    return card


def test_an_object_left_out_of_a_mask_is_a_suspect_outlined_as_missing(tmp_path):
    card = _squares(tmp_path / "squares")
    train(card, tmp_path / "run", config=tiny_config(epochs=12, lr=1e-2))
    html = render_report(tmp_path / "run", tmp_path / "r.html", top=3).read_text(encoding="utf-8")
    section = _section(html, "seg")
    for row_id in LEFT_OUT:
        assert "suspect" in section.split(f"<code>{row_id}</code>", 1)[0].rsplit("<tr", 1)[1]
        why = _why(section, row_id)
        found = re.match(
            r"objects the mask leaves out: missing ([\d.]+)% \(typical label: ([\d.]+)%\)", why
        )
        assert found, why
        assert float(found.group(1)) > 5 > float(found.group(2))  # a 6x6 object: 14% of 16x16
        row = section.split(f"<code>{row_id}</code>", 1)[1].split("</tr>", 1)[0]
        (picture,) = re.findall(
            r'<td class="why">[^<]*<img class="thumb" src="data:image/png;base64,([^"]+)"', row
        )
        with Image.open(io.BytesIO(base64.b64decode(picture))) as image:
            colours = {tuple(c) for _, c in image.convert("RGB").getcolors(1 << 16)}
        assert MISSING_COLOUR in colours and EXTRA_COLOUR not in colours  # the mask has no object


def test_an_old_run_without_evidence_says_so_and_is_explained_by_log_sigma2(planted_run, tmp_path):
    old = tmp_path / "old"
    shutil.copytree(planted_run.run, old)
    for path in (old / "trajectories").glob("*.parquet"):  # the schema before the evidence
        pq.write_table(
            pq.read_table(path).select(["epoch", "id", "task", "log_sigma2", "loss"]), path
        )
    html = unescape(render_report(old, tmp_path / "r.html", top=3).read_text(encoding="utf-8"))
    assert "label: the run has no evidence columns (trained before they were recorded)" in html
    assert "hard to fit (high log σ²): mean log σ² " in html


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
