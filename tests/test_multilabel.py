"""Multi-label tasks: a card's tag sets (a list per row, or text with a separator) read into a
multi-hot table, refused cell by cell when they do not fit, trained with a per-tag binary
cross-entropy, their evidence (a tag the network sees that the label lacks, a tag the label has
that the network denies) turned into p_wrong, planted with swap-tag/drop-tag/add-tag, reviewed by
ticking tags and fixed in the table's own format.

Every dataset is ``make_tags_card``'s: tag j of cat/dog/owl/fox is present where feature j is
above 0.3, so the tags can be learned from the features.
"""

from __future__ import annotations

import json
import re
import shutil
import threading
import time
import urllib.error
import urllib.request
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from browser import require_chromium
from conftest import tiny_config
from helpers_data import TAGS, make_tags_card

from ilt_audit.audit.calibration import audit
from ilt_audit.audit.explanation import explain
from ilt_audit.audit.ranking import rank
from ilt_audit.corruption.planting import corrupt, read_truth
from ilt_audit.dataset import load_dataset, open_dataset
from ilt_audit.dataset.card import TaskSpec, load_card
from ilt_audit.errors import CardError
from ilt_audit.review.app import bind, open_review, review_app, serve, url_of
from ilt_audit.review.decisions import Decision, DecisionError, check_decision
from ilt_audit.review.export import label_studio_config, label_studio_tasks
from ilt_audit.review.fix import CHANGES_FILE, fix
from ilt_audit.review.instances import why_text
from ilt_audit.review.report import render_report
from ilt_audit.run.evidence import COLUMNS, SIGNALS, compute
from ilt_audit.training.loop import train
from ilt_audit.training.losses import INSTANCE_LOSS, LIKELIHOOD
from ilt_audit.training.model import ModelConfig

TRAIN = ("--epochs", "1", "--device", "cpu", "--workers", "0")
TASK = TaskSpec("tags", "multi-label", ("tags",), ("a", "b", "c"))  # for losses and evidence


def _tags(manifest, task: str = "tags") -> list[set[str]]:
    """Every row's tag set, from the multi-hot table."""
    spec = manifest.card.task(task)
    names = manifest.class_names[task]
    return [{names[c] for c in np.flatnonzero(row)} for row in manifest.tag_matrix(spec)]


def _refused(result, *fragments: str) -> None:
    """Exit 2 with one ``Error:`` line holding every fragment, and no traceback."""
    assert result.exit_code == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    for fragment in fragments:
        assert fragment in result.err, result.err


# --- the card and its table --------------------------------------------------------------------


@pytest.mark.parametrize("table", ["manifest.parquet", "manifest.jsonl", "manifest.csv"])
def test_lists_and_separated_text_read_as_the_same_tag_sets(tmp_path, table):
    reference = open_dataset(make_tags_card(tmp_path / "ref")).manifest
    manifest = open_dataset(make_tags_card(tmp_path / "t", table=table)).manifest
    assert manifest.class_names["tags"] == TAGS  # the card's order, not sorted
    table_ = manifest.tag_matrix(manifest.card.task("tags"))
    assert table_.dtype == bool and table_.shape == (40, len(TAGS))
    np.testing.assert_array_equal(table_, reference.tag_matrix(reference.card.task("tags")))
    assert (~table_.any(axis=1)).any()  # some instances have no tag, and that is fine


def test_without_classes_the_tags_are_every_tag_seen_sorted(tmp_path):
    manifest = open_dataset(make_tags_card(tmp_path / "d", classes=False)).manifest
    assert manifest.class_names["tags"] == tuple(sorted(TAGS))


def test_a_custom_separator_and_spaces_around_tags(tmp_path):
    card = make_tags_card(tmp_path / "d", table="manifest.csv", separator=";")
    frame = pd.read_csv(card.parent / "manifest.csv")
    frame.loc[0, "tags"] = " dog ;  cat"
    frame.to_csv(card.parent / "manifest.csv", index=False)
    manifest = open_dataset(card).manifest
    assert _tags(manifest)[0] == {"cat", "dog"}


def test_the_loader_keeps_tags_as_a_multi_hot_bool_table(tmp_path):
    data = load_dataset(make_tags_card(tmp_path / "d"))
    task = data.card.task("tags")
    assert data.table["tags"].dtype == torch.bool and tuple(data.table["tags"].shape) == (40, 4)
    assert data.out_features(task) == len(TAGS)


def _write(card: Path, column: str, row: int, value: object) -> None:
    """Set one cell of a card's Parquet table (lists stay lists)."""
    path = card.parent / "manifest.parquet"
    frame = pq.read_table(path).to_pandas()
    cells = frame[column].tolist()
    cells[row] = value
    frame[column] = pd.Series(cells, dtype=object)
    pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), path)


@pytest.mark.parametrize(
    ("value", "fragments"),
    [
        (["cat", "bird"], ["tag 'bird' is not one of the task's classes", "'cat', 'bird'"]),
        (None, ["the tag list is missing (write [] for an instance without tags)"]),
        (["cat", ""], ["a tag is empty"]),
    ],
    ids=["unknown-tag", "missing-list", "empty-tag"],
)
def test_a_bad_list_cell_exits_2_naming_file_row_and_column(tmp_path, cli, value, fragments):
    card = make_tags_card(tmp_path / "d")
    _write(card, "tags", 3, value)
    out = tmp_path / "run"
    result = cli("train", card, "--out", out, *TRAIN)
    _refused(result, "manifest.parquet", "row id 'r003'", "column 'tags'", *fragments)
    assert not out.exists()


@pytest.mark.parametrize(
    ("cell", "fragment"),
    [
        ("cat||dog", "an empty tag (two separators '|' in a row, or one at an end)"),
        ("cat|", "an empty tag"),
    ],
)
def test_a_bad_text_cell_exits_2_naming_its_row(tmp_path, cli, cell, fragment):
    card = make_tags_card(tmp_path / "d", table="manifest.csv")
    frame = pd.read_csv(card.parent / "manifest.csv")
    frame.loc[5, "tags"] = cell
    frame.to_csv(card.parent / "manifest.csv", index=False)
    result = cli("train", card, "--out", tmp_path / "run", *TRAIN)
    _refused(result, "manifest.csv", "row id 'r005'", "column 'tags'", fragment, repr(cell))


def test_a_json_lines_table_mixing_lists_and_text_names_the_odd_row(tmp_path, cli):
    card = make_tags_card(tmp_path / "d", table="manifest.jsonl")
    lines = (card.parent / "manifest.jsonl").read_text().splitlines()
    record = json.loads(lines[7])
    record["tags"] = "cat|dog"
    lines[7] = json.dumps(record)
    (card.parent / "manifest.jsonl").write_text("\n".join(lines) + "\n")
    result = cli("train", card, "--out", tmp_path / "run", *TRAIN)
    _refused(result, "row id 'r007'", "column 'tags'", "expected a list of tags")


@pytest.mark.parametrize(
    ("line", "fragment"),
    [
        ('classes = ["cat", "cat"]', "classes: tag 'cat' is listed twice"),
        ("classes = []", "classes must be a list of tags"),
        ('separator = ""', "separator must be the text between two tags"),
    ],
)
def test_a_bad_card_key_exits_2(tmp_path, cli, line, fragment):
    card = make_tags_card(tmp_path / "d", classes=False)
    card.write_text(card.read_text() + line + "\n")
    _refused(cli("train", card, "--out", tmp_path / "run", *TRAIN), "[tasks.tags]", fragment)


def test_a_separator_on_another_task_type_is_refused(tmp_path):
    card = make_tags_card(tmp_path / "d")
    text = card.read_text().replace('type = "multi-label"', 'type = "classification"')
    card.write_text(text.replace('classes = ["cat", "dog", "owl", "fox"]', 'separator = ";"'))
    with pytest.raises(CardError, match="'separator' applies only to multi-label tasks"):
        load_card(card)


HOSTILE = "=1+1<script>alert(1)</script>[bold]|`x`"  # a formula, a script, markup, a separator


def test_a_hostile_tag_is_kept_as_written_and_shown_as_text(tmp_path, cli):
    card = make_tags_card(tmp_path / "d", classes=False)
    frame = pq.read_table(card.parent / "manifest.parquet").to_pandas()
    frame["tags"] = [[HOSTILE, *tags] if i % 2 else list(tags) for i, tags in enumerate(frame.tags)]
    pq.write_table(
        pa.Table.from_pandas(frame, preserve_index=False), card.parent / "manifest.parquet"
    )
    assert HOSTILE in open_dataset(card).manifest.class_names["tags"]  # a list keeps its "|"
    run = tmp_path / "run"
    train(card, run, config=tiny_config(epochs=2))
    out = tmp_path / "suspects.csv"
    assert cli("rank", run, "--format", "csv", "--output", out).exit_code == 0
    labels = pd.read_csv(out).label.dropna()
    assert labels.str.startswith("'=1+1<script>").any() and not labels.str.startswith("=").any()
    assert "[bold]" in cli("rank", run, "--top", "100%").out  # markup printed as text
    page = render_report(run, tmp_path / "report.html", top=40).read_text()
    assert "<script>alert(1)" not in page and "&lt;script&gt;alert(1)" in page


# --- training: loss, evidence, metric -----------------------------------------------------------


def test_the_loss_is_the_mean_binary_cross_entropy_over_the_tags_in_the_cls_form():
    logits = torch.tensor([[2.0, -1.0, 0.0], [0.0, 0.0, 0.0]])
    target = torch.tensor([[1.0, 0.0, 1.0], [0.0, 0.0, 0.0]])
    expected = -(
        target * torch.log(torch.sigmoid(logits)) + (1 - target) * torch.log(torch.sigmoid(-logits))
    ).mean(dim=1)
    torch.testing.assert_close(INSTANCE_LOSS["multi-label"](logits, target, TASK), expected)
    assert LIKELIHOOD["multi-label"] == "cls"


def test_the_evidence_names_the_tag_the_label_lacks_and_the_one_it_has_in_doubt():
    logits = torch.tensor(
        [
            [4.0, -4.0, 3.0],  # label {a}: c is seen (0.95) but missing; a is confirmed
            [-3.0, 3.0, 3.0],  # label {a, b, c}: nothing missing; a is denied (0.05)
            [-4.0, -4.0, -4.0],  # label {}: nothing extra; the likeliest absent is a tie
        ]
    )
    target = torch.tensor([[1.0, 0.0, 0.0], [1.0, 1.0, 1.0], [0.0, 0.0, 0.0]])
    values = compute((TASK,), {"tags": logits}, {"tags": target}, {})
    found = {s.column: values[:, i].tolist() for i, s in enumerate(SIGNALS["multi-label"])}
    assert found["missing_tag"][0] == pytest.approx(torch.sigmoid(torch.tensor(3.0)).item())
    assert found["missing_tag_index"][:2] == [2.0, -1.0]  # none missing when every tag is there
    assert found["missing_tag"][1] == 0.0
    assert found["extra_tag"][1] == pytest.approx(1 - torch.sigmoid(torch.tensor(-3.0)).item())
    assert found["extra_tag_index"] == [0.0, 0.0, -1.0]  # no tag, none extra
    assert found["extra_tag"][2] == 0.0
    assert {s.column for s in SIGNALS["multi-label"]} <= set(COLUMNS)


# --- planted errors, end to end -------------------------------------------------------------------


@dataclass(frozen=True)
class Planted:
    clean: Path
    card: Path
    run: Path
    truth: pd.DataFrame  # id, task, corrupted, mode, magnitude, detail (training rows)


@pytest.fixture(scope="module")
def planted(tmp_path_factory: pytest.TempPathFactory) -> Planted:
    """120 rows (every sixth a validation row), a tenth of the training rows with a tag dropped,
    then a tenth with a tag swapped (``detail``: the last change of a row); 25 epochs of a
    small MLP."""
    root = tmp_path_factory.mktemp("multilabel")
    clean = make_tags_card(root / "clean", n=120, split=True)
    dropped = corrupt(clean, tasks=["tags"], fraction=0.1, seed=1, mode="drop-tag", out=root / "a")
    swapped = corrupt(dropped.card_path, tasks=["tags"], fraction=0.1, seed=2, out=root / "b")
    truth = read_truth(dropped.truth_path).set_index("id")
    second = read_truth(swapped.truth_path).set_index("id")
    truth["corrupted"] |= second.corrupted
    truth["detail"] = second.detail.where(second.corrupted, truth.detail)  # the last change
    config = tiny_config(epochs=25, lr=1e-2, model=ModelConfig(hidden=32, depth=1))
    train(swapped.card_path, root / "run", config=config)
    return Planted(clean, swapped.card_path, root / "run", truth.reset_index())


def test_planted_errors_get_a_p_wrong_well_above_the_clean_labels(planted: Planted):
    found = audit(planted.run).to_frame().merge(planted.truth, on=["id", "task"])
    wrong, right = found[found.corrupted], found[~found.corrupted]
    assert len(wrong) >= 15
    assert wrong.p_wrong.median() > 0.5 > right.p_wrong.quantile(0.9)
    top = found.nlargest(len(wrong), "p_wrong")
    assert top.corrupted.mean() >= 0.6  # most of the highest p_wrong are planted


def test_the_trajectories_hold_the_tag_evidence(planted: Planted):
    frame = pd.read_parquet(planted.run / "trajectories")
    for column in ("missing_tag", "extra_tag"):
        assert frame[column].between(0, 1).all()
    for column in ("missing_tag_index", "extra_tag_index"):
        assert set(frame[column].unique()) <= {-1.0, 0.0, 1.0, 2.0, 3.0}
    assert frame[["margin", "residual", "iou"]].isna().all().all()  # other types' columns


def test_the_validation_metric_is_micro_f1(planted: Planted):
    lines = (planted.run / "metrics.jsonl").read_text().splitlines()
    last = json.loads(lines[-1])["val"]["tags"]
    assert list(last) == ["micro_f1"] and 0.6 < last["micro_f1"] <= 1.0


def test_the_why_line_names_the_dropped_tag(planted: Planted):
    drops = planted.truth[planted.truth.detail.fillna("").str.startswith("-")]
    evidence = explain(planted.run, drops[["id", "task"]])
    sure = evidence[evidence.p_wrong > 0.5]
    assert len(sure) >= len(drops) // 2
    dropped = drops.set_index("id").detail.str[1:]
    assert (sure.tag_missing.to_numpy() == dropped[sure.id].to_numpy()).all()
    line = why_text(sure.iloc[0].to_dict(), "")
    assert line.startswith(f"the network sees {dropped[sure.id.iloc[0]]} (")
    assert "which the label lacks" in line


def test_rank_shows_the_tags_joined_in_the_cards_order(planted: Planted):
    ranked = rank(planted.run, top="100%").set_index("id")
    manifest = open_dataset(planted.card).manifest
    sets = dict(zip(manifest.ids, _tags(manifest), strict=True))
    for row_id, label in ranked.label.items():
        assert label == "|".join(t for t in TAGS if t in sets[row_id])


def test_the_report_shows_the_tags_and_the_networks_tags(planted: Planted, tmp_path):
    page = render_report(planted.run, tmp_path / "report.html", top=5).read_text()
    for row in rank(planted.run, top=5).itertuples():
        shown = re.search(
            rf"<code>{row.id}</code>.*?<td>{re.escape(row.label or 'no tag')}</td><td>([^<]*)</td>",
            page,
        )
        assert shown is not None, row.id  # the label's tags, then the network's
        assert re.fullmatch(
            r"no tag|(cat|dog|owl|fox) \(\d+%\)(, (cat|dog|owl|fox) \(\d+%\))*", shown[1]
        )


def test_label_studio_gets_multiple_choices_holding_the_rows_tags(planted: Planted):
    tasks = label_studio_tasks(planted.run, task="tags", top=5)
    manifest = open_dataset(planted.card).manifest
    sets = dict(zip(manifest.ids, _tags(manifest), strict=True))
    for task in tasks:
        (result,) = task["predictions"][0]["result"]
        assert result["type"] == "choices" and result["from_name"] == "tags"
        assert result["value"]["choices"] == [t for t in TAGS if t in sets[task["data"]["id"]]]
    view = ET.fromstring(label_studio_config(planted.run, tasks))
    (choices,) = view.findall("Choices")
    assert choices.get("choice") == "multiple" and choices.get("name") == "tags"
    assert [c.get("value") for c in choices.findall("Choice")] == list(TAGS)


# --- review and fix ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "canonical"),
    [("dog|cat", '["cat", "dog"]'), ('["owl", "cat"]', '["cat", "owl"]'), ("[]", "[]")],
)
def test_a_tag_relabel_is_kept_as_a_json_list_in_the_cards_order(tmp_path, value, canonical):
    manifest = open_dataset(make_tags_card(tmp_path / "d")).manifest
    decided = check_decision(manifest, Decision("r001", "tags", "relabel", value))
    assert decided.value == canonical


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        ('["bird"]', "'bird' is not a tag of task 'tags'; its tags are: cat, dog, owl, fox"),
        ("cat||dog", "takes a tag set"),
        ("[1.5]", "takes a tag set"),
    ],
)
def test_a_tag_relabel_that_does_not_fit_is_refused(tmp_path, value, fragment):
    manifest = open_dataset(make_tags_card(tmp_path / "d")).manifest
    with pytest.raises(DecisionError) as caught:
        check_decision(manifest, Decision("r001", "tags", "relabel", value))
    assert fragment in str(caught.value) and caught.value.column == "value"


def _post(url: str, token: str, body: object) -> tuple[int, dict]:
    request = urllib.request.Request(
        url + "api/decisions",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json", "X-Review-Token": token},
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def _serve(run: Path) -> tuple[str, object]:
    review = open_review(run, reviewer="tester", top="100%")
    sock = bind("127.0.0.1", 0)
    threading.Thread(target=serve, args=(review_app(review), sock), daemon=True).start()
    url = url_of(sock)
    for _ in range(100):
        try:
            urllib.request.urlopen(url, timeout=5)
            break
        except (urllib.error.URLError, ConnectionError):
            time.sleep(0.05)
    return url, review


def test_review_ticks_tags_and_fix_writes_the_tag_sets_back_as_lists(planted: Planted, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(planted.run, run)
    url, review = _serve(run)
    with urllib.request.urlopen(url + "tasks/tags") as response:
        page = response.read().decode()
    assert 'type="checkbox" name="value" value="owl"' in page  # one box per tag

    clean = open_dataset(planted.clean).manifest
    true_tags = dict(zip(clean.ids, _tags(clean), strict=True))
    wrong = planted.truth[planted.truth.corrupted].id.tolist()[:2]
    right = planted.truth[~planted.truth.corrupted].id.tolist()[0]
    restored = sorted(true_tags[wrong[0]])
    status, answer = _post(
        url,
        review.token,
        {"id": wrong[0], "task": "tags", "decision": "relabel", "value": restored},
    )
    assert status == 200 and json.loads(answer["value"]) == [t for t in TAGS if t in restored]
    assert _post(url, review.token, {"id": right, "task": "tags", "decision": "keep"})[0] == 200
    assert _post(url, review.token, {"id": wrong[1], "task": "tags", "decision": "drop"})[0] == 200
    refused = {"id": right, "task": "tags", "decision": "relabel", "value": ["bird"]}
    assert _post(url, review.token, refused)[0] == 422

    result = fix(planted.card, decisions=run, out=tmp_path / "fixed")
    table = pq.read_table(tmp_path / "fixed" / "manifest.parquet")
    assert pa.types.is_list(table.schema.field("tags").type)  # still a list column
    fixed = open_dataset(result.card_path).manifest
    after = dict(zip(fixed.ids, _tags(fixed), strict=True))
    before = open_dataset(planted.card).manifest
    assert after[wrong[0]] == true_tags[wrong[0]]
    assert wrong[1] not in after
    assert after[right] == dict(zip(before.ids, _tags(before), strict=True))[right]
    changes = pd.read_parquet(tmp_path / "fixed" / CHANGES_FILE).set_index("id")
    assert json.loads(changes.loc[wrong[0], "new"]) == [t for t in TAGS if t in restored]
    assert set(json.loads(changes.loc[wrong[0], "old"])) != true_tags[wrong[0]]


def test_the_review_page_ticks_and_unticks_tags_in_a_browser(planted: Planted, tmp_path):
    from playwright.sync_api import expect, sync_playwright

    chromium = require_chromium()
    run = tmp_path / "run"
    shutil.copytree(planted.run, run)
    url, review = _serve(run)
    with sync_playwright() as driver:
        browser = driver.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        page = browser.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(url + "tasks/tags")
        card = page.locator("article.suspect").nth(0)
        instance = card.get_attribute("data-id")
        boxes = card.locator("input[type=checkbox]")
        ticked = [boxes.nth(i).is_checked() for i in range(len(TAGS))]
        page.keyboard.press("r")  # the form opens with the first box focused
        expect(boxes.nth(0)).to_be_focused()
        page.keyboard.press("Space")  # toggle cat
        page.keyboard.press("Enter")
        wanted = [t for t, on in zip(TAGS, ticked, strict=True) if on != (t == "cat")]
        expect(card.locator(".status")).to_have_text(
            f"saved: relabel → {json.dumps(wanted)} (tester)"
        )
        browser.close()
    assert errors == []
    latest = review.store.latest().set_index("id")
    assert json.loads(latest.loc[instance, "value"]) == wanted


# --- corrupt keeps the table's format --------------------------------------------------------------


@pytest.mark.parametrize("table", ["manifest.csv", "manifest.jsonl", "manifest.parquet"])
def test_corrupt_writes_tags_in_the_tables_form_and_changes_only_the_planted_rows(tmp_path, table):
    card = make_tags_card(tmp_path / "d", table=table, separator=";" if "csv" in table else None)
    result = corrupt(
        card, tasks=["tags"], fraction=0.25, seed=0, mode="add-tag", out=tmp_path / "o"
    )
    truth = read_truth(result.truth_path).set_index("id")
    old, new = open_dataset(card).manifest, open_dataset(result.card_path).manifest
    before = dict(zip(old.ids, _tags(old), strict=True))
    after = dict(zip(new.ids, _tags(new), strict=True))
    assert {i for i in before if before[i] != after[i]} == set(truth.index[truth.corrupted])
    for i in truth.index[truth.corrupted]:
        assert after[i] - before[i] == {truth.detail[i][1:]}
    column = new.frame["tags"]
    if table == "manifest.csv":
        raw = pd.read_csv(result.card_path.parent / table).tags.dropna()
        assert raw.str.contains(";").any() and not raw.str.contains(r"\|").any()
    else:
        assert all(isinstance(v, list | np.ndarray) for v in column)


def test_integer_tags_stay_integers(tmp_path):
    card = make_tags_card(tmp_path / "d", table="manifest.jsonl", classes=False)
    lines = (card.parent / "manifest.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    for record in records:
        record["tags"] = [TAGS.index(t) + 1 for t in record["tags"]]
    (card.parent / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    assert open_dataset(card).manifest.class_names["tags"] == ("1", "2", "3", "4")
    result = corrupt(card, tasks=["tags"], fraction=0.25, mode="drop-tag", out=tmp_path / "o")
    written = [
        json.loads(line)["tags"]
        for line in result.card_path.with_name("manifest.jsonl").read_text().splitlines()
    ]
    assert all(isinstance(t, int) for row in written for t in row)


# --- init ----------------------------------------------------------------------------------------


def test_init_recognises_a_list_column_as_multi_label(tmp_path, cli):
    card = make_tags_card(tmp_path / "d")
    result = cli("init", card.parent / "manifest.parquet", "--out", tmp_path / "d" / "new.toml")
    assert result.exit_code == 0, result.stderr
    assert (
        "task tags: multi-label" in result.out and "a list per row: 4 distinct tags" in result.out
    )
    assert load_card(tmp_path / "d" / "new.toml").task("tags").type == "multi-label"


def test_init_takes_a_text_column_as_multi_label_by_hand(tmp_path, cli):
    card = make_tags_card(tmp_path / "d", table="manifest.csv")
    out = tmp_path / "d" / "new.toml"
    result = cli("init", card.parent / "manifest.csv", "--out", out, "--task", "t=tags:multi-label")
    assert result.exit_code == 0, result.stderr
    manifest = open_dataset(out).manifest
    assert manifest.class_names["t"] == tuple(sorted(TAGS))


def test_same_seed_same_trajectories(tmp_path):
    card = make_tags_card(tmp_path / "d")
    for name in ("a", "b"):
        train(card, tmp_path / name, config=tiny_config(epochs=2))
    first = pd.read_parquet(tmp_path / "a" / "trajectories")
    pd.testing.assert_frame_equal(first, pd.read_parquet(tmp_path / "b" / "trajectories"))


def test_a_csv_column_of_single_integer_tags_is_written_back_as_the_same_tags(tmp_path):
    card = make_tags_card(tmp_path / "d", table="manifest.csv", classes=False)
    frame = pd.read_csv(card.parent / "manifest.csv")
    frame["tags"] = [float(i % 3 + 1) if i % 4 else None for i in range(len(frame))]  # 2.0, ""
    frame.to_csv(card.parent / "manifest.csv", index=False)
    before = open_dataset(card).manifest
    assert before.frame["tags"].dtype.kind == "f" and before.class_names["tags"] == ("1", "2", "3")
    result = corrupt(card, tasks=["tags"], fraction=0.25, mode="add-tag", out=tmp_path / "o")
    truth = read_truth(result.truth_path).set_index("id")
    after = open_dataset(result.card_path).manifest
    assert after.class_names["tags"] == ("1", "2", "3")  # not "2.0"
    old = dict(zip(before.ids, _tags(before), strict=True))
    new = dict(zip(after.ids, _tags(after), strict=True))
    assert {i for i in old if old[i] != new[i]} == set(truth.index[truth.corrupted])
