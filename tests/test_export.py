"""Exports for labelling tools: Label Studio tasks of the suspects, the current label as the
pre-annotation, and a labelling interface whose controls the results name."""

from __future__ import annotations

import json
import shutil
import xml.etree.ElementTree as ET
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import numpy as np
import pandas as pd
import pytest
from conftest import tiny_config, write_features_dataset, write_image_dataset
from PIL import Image

from ilt_audit.audit.ranking import rank
from ilt_audit.errors import OptionError
from ilt_audit.review.export import (
    LOCAL_FILES,
    MODEL_VERSION,
    brush_rle,
    label_studio_config,
    label_studio_tasks,
)

CONTROL_TAGS = {"choices": "Choices", "number": "Number", "brushlabels": "BrushLabels"}


@pytest.fixture(scope="module")
def image_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A finished tiny run on the image card (all four task types): (run, card)."""
    from ilt_audit.training.loop import train

    root = tmp_path_factory.mktemp("export-images")
    card = write_image_dataset(root / "data")
    train(card, root / "run", config=tiny_config())
    return root / "run", card


def decode_rle(data: list[int]) -> np.ndarray:
    """Label Studio's brush RLE decoded as its editor does (rle-pack's ``decode``), written from
    the format, independently of the encoder: the flat RGBA values."""
    bits = np.unpackbits(np.array(data, dtype=np.uint8))
    at = 0

    def read(n: int) -> int:
        nonlocal at
        value = int("".join(map(str, bits[at : at + n])), 2)
        at += n
        return value

    count, word = read(32), read(5) + 1
    sizes = [read(4) + 1 for _ in range(4)]
    out = np.zeros(count, dtype=np.int64)
    i = 0
    while i < count:
        repeat = read(1)
        j = i + 1 + read(sizes[read(2)])
        if repeat:
            out[i:j] = read(word)
            i = j
        else:
            while i < j:
                out[i] = read(word)
                i += 1
    return out


def brush_layer(data: list[int], height: int, width: int) -> np.ndarray:
    """The painted pixels of a brush RLE: its alpha channel, as label-studio-converter reads it."""
    return decode_rle(data).reshape(height, width, 4)[:, :, 3] > 0


def local_path(url: str) -> str:
    """The path a Label Studio local files URL serves, relative to the document root."""
    assert url.startswith(LOCAL_FILES)
    return parse_qs(urlsplit(url).query)["d"][0]


def controls(config: str) -> dict[str, ET.Element]:
    """The named tags of a labelling interface, by name."""
    return {tag.attrib["name"]: tag for tag in ET.fromstring(config).iter() if "name" in tag.attrib}


def manifest_of(card: Path) -> pd.DataFrame:
    return pd.read_csv(card.parent / "manifest.csv", dtype={"id": str}, keep_default_na=False)


# --- the brush RLE ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "mask",
    [
        np.zeros((5, 7), dtype=bool),
        np.ones((3, 3), dtype=bool),
        np.random.default_rng(0).random((17, 23)) > 0.5,  # many short runs
        np.pad(np.ones((40, 50), dtype=bool), 30),
        np.ones((200, 200), dtype=bool),  # one run of 160,000 values: longer than a chunk holds
        np.eye(1, dtype=bool),
    ],
    ids=["empty", "full", "noise", "square", "long-run", "one-pixel"],
)
def test_brush_rle_decodes_to_the_mask(mask):
    encoded = brush_rle(mask)
    assert all(isinstance(b, int) and 0 <= b <= 255 for b in encoded)
    assert np.array_equal(brush_layer(encoded, *mask.shape), mask)
    assert len(decode_rle(encoded)) == mask.size * 4  # RGBA, every channel painted alike


# --- tasks -----------------------------------------------------------------------------------


def test_one_task_per_suspect_in_rank_order(planted_run):
    tasks = label_studio_tasks(planted_run.run, top=5)
    parsed = json.loads(json.dumps(tasks, allow_nan=False))
    assert parsed == tasks
    ranked = rank(planted_run.run, top=5)
    assert [(t["data"]["task"], t["data"]["id"], t["data"]["rank"]) for t in tasks] == list(
        zip(ranked.task, ranked.id, ranked["rank"], strict=True)
    )
    for task, score in zip(tasks, ranked.score, strict=True):
        [prediction] = task["predictions"]
        assert prediction["model_version"] == MODEL_VERSION
        assert prediction["score"] == task["data"]["score"] == pytest.approx(score)


def test_the_pre_annotation_is_the_label_in_the_manifest(planted_run):
    manifest = manifest_of(planted_run.card).set_index("id")
    tasks = label_studio_tasks(planted_run.run)
    assert len(tasks) == 2 * len(manifest)  # no --top: every instance of both tasks
    flipped_seen = 0
    for task in tasks:
        row = manifest.loc[task["data"]["id"]]
        [prediction] = task["predictions"]
        results = {r["from_name"]: r for r in prediction["result"]}
        if task["data"]["task"] == "label":
            assert results["label"]["type"] == "choices"
            assert results["label"]["value"] == {"choices": [row.label]}
            flipped_seen += task["data"]["id"] in planted_run.flipped
        else:
            assert {name: r["type"] for name, r in results.items()} == {
                "target.0": "number",
                "target.1": "number",
            }
            assert results["target.0"]["value"]["number"] == pytest.approx(row.y0, rel=1e-12)
            assert results["target.1"]["value"]["number"] == pytest.approx(row.y1, rel=1e-12)
        assert task["data"]["features"] == pytest.approx(
            {"f0": row.f0, "f1": row.f1, "f2": row.f2}, rel=1e-12
        )
    assert flipped_seen == len(planted_run.flipped)  # the wrong labels as given, to be corrected


def test_task_and_by_choose_what_is_exported(planted_run):
    tasks = label_studio_tasks(planted_run.run, task="target", top="10%", by="loss")
    assert {t["data"]["task"] for t in tasks} == {"target"}
    assert len(tasks) == 6
    names = controls(label_studio_config(planted_run.run, tasks))
    assert "label" not in names  # only the exported tasks' controls
    assert {"target.0", "target.1", "Input"} <= set(names)


def test_result_names_are_controls_of_the_interface(planted_run, image_run):
    for run in (planted_run.run, image_run[0]):
        tasks = label_studio_tasks(run, top=3)
        names = controls(label_studio_config(run, tasks))
        for task in tasks:
            for result in task["predictions"][0]["result"]:
                assert names[result["from_name"]].tag == CONTROL_TAGS[result["type"]]
                assert names[result["from_name"]].attrib["toName"] == result["to_name"]
                assert names[result["to_name"]].tag in ("Image", "Table")
                labels = result["value"].get("choices") or result["value"].get("brushlabels")
                options = {o.attrib["value"] for o in names[result["from_name"]]}
                assert set(labels or ()) <= options


def test_image_tasks_point_at_the_cards_files_inside_its_folder(image_run):
    run, card = image_run
    root = card.parent.resolve()
    manifest = manifest_of(card).set_index("id")
    tasks = label_studio_tasks(run, top=4)
    assert {t["data"]["task"] for t in tasks} == {"colour", "geometry", "seg", "depth"}
    for task in tasks:
        data = task["data"]
        row = manifest.loc[data["id"]]
        served = {"image": row.image}
        if data["task"] in ("seg", "depth"):
            served["label_file"] = row["mask" if data["task"] == "seg" else "depth"]
        else:
            assert "label_file" not in data
        for key, path in served.items():
            relative = local_path(data[key])
            assert relative == path
            assert not relative.startswith("/") and ".." not in relative.split("/")
            assert (root / relative).resolve().is_relative_to(root)
            assert (root / relative).is_file()


def test_masks_are_brush_regions_of_their_classes(image_run):
    run, card = image_run
    manifest = manifest_of(card).set_index("id")
    tasks = label_studio_tasks(run, task="seg")
    assert len(tasks) == len(manifest)
    for task in tasks:
        mask = np.asarray(Image.open(card.parent / manifest.loc[task["data"]["id"], "mask"]))
        results = task["predictions"][0]["result"]
        painted = {int(r["value"]["brushlabels"][0]) for r in results}
        assert painted == set(np.unique(mask).tolist()) - {0}  # the background stays unpainted
        for result in results:
            assert result["value"]["format"] == "rle"
            assert (result["original_height"], result["original_width"]) == mask.shape
            [value] = result["value"]["brushlabels"]
            layer = brush_layer(result["value"]["rle"], *mask.shape)
            assert np.array_equal(layer, mask == int(value))
    labels = controls(label_studio_config(run, tasks))["seg"]
    assert [label.attrib["value"] for label in labels] == ["1", "2"]


def test_depth_maps_have_no_control_only_their_file(image_run):
    run, _ = image_run
    tasks = label_studio_tasks(run, task="depth", top=2)
    assert all(t["predictions"][0]["result"] == [] for t in tasks)
    assert all(t["data"]["label_file"].endswith(".npy") for t in tasks)
    names = controls(label_studio_config(run, tasks))
    assert set(names) == {"Input"}


ODD_IDS = {"r000": 'say "hi"', "r001": "<b>&amp;</b>", "r002": "two\nlines", "r003": "$image"}
ODD_LABELS = {"a": 'a<"&>', "b": "b\nb", "c": "c\x01"}  # \x01: a character XML cannot hold


def test_odd_ids_and_labels_survive_json_and_xml(tmp_path, cli):
    from ilt_audit.training.loop import train

    card = write_features_dataset(tmp_path / "data")
    card.write_text(card.read_text().replace('classes = ["a", "b", "c"]\n', ""))
    table = card.parent / "manifest.csv"
    frame = pd.read_csv(table, dtype={"id": str})
    frame["id"] = frame["id"].replace(ODD_IDS)
    frame["label"] = frame["label"].replace(ODD_LABELS)
    frame.to_csv(table, index=False)
    run = tmp_path / "run"
    train(card, run, config=tiny_config())

    out = tmp_path / "suspects.json"
    result = cli("rank", run, "--format", "label-studio", "--output", out)
    assert result.exit_code == 0, result.stderr
    tasks = json.loads(out.read_text(encoding="utf-8"))
    assert {t["data"]["id"] for t in tasks} >= set(ODD_IDS.values())
    config = (tmp_path / "suspects.label-config.xml").read_text(encoding="utf-8")
    choices = [c.attrib["value"] for c in controls(config)["label"]]
    safe = {'a<"&>', "b\nb", "c\ufffd"}  # XML keeps '<', quotes and newlines; not \x01
    assert set(choices) == safe
    labels = {t["data"]["id"]: t for t in tasks if t["data"]["task"] == "label"}
    given = frame.set_index("id").label
    for row_id, task in labels.items():
        assert task["data"]["label"] == given[row_id]  # the data keeps the label as written
        [choice] = task["predictions"][0]["result"][0]["value"]["choices"]
        assert choice == given[row_id].replace("\x01", "\ufffd") and choice in safe


def _escape_the_folder(card: Path, how: str) -> None:
    """Make row i000's image lie outside the card's folder (the card allowing that)."""
    outside = card.parent.parent / "elsewhere"
    outside.mkdir()
    shutil.copy(card.parent / "images" / "i000.png", outside / "i000.png")
    card.write_text("allow_outside_paths = true\n" + card.read_text())
    if how == "path":
        table = card.parent / "manifest.csv"
        table.write_text(table.read_text().replace("images/i000.png", "../elsewhere/i000.png"))
    else:
        (card.parent / "images" / "i000.png").unlink()
        (card.parent / "images" / "i000.png").symlink_to(outside / "i000.png")


@pytest.mark.parametrize("how", ["path", "link"])
def test_a_file_outside_the_cards_folder_is_refused(tmp_path, how, cli):
    from ilt_audit.training.loop import train

    card = write_image_dataset(tmp_path / "data")
    run = tmp_path / "run"
    train(card, run, config=tiny_config())
    _escape_the_folder(card, how)
    with pytest.raises(OptionError, match="row id 'i000': column 'image'.*not inside the card"):
        label_studio_tasks(run, task="colour")
    result = cli("rank", run, "--format", "label-studio", "--task", "colour")
    assert result.exit_code == 2
    assert "row id 'i000'" in result.err and result.stdout == ""


# --- the command line ------------------------------------------------------------------------


def test_rank_label_studio_to_stdout(planted_run, cli):
    result = cli("rank", planted_run.run, "--format", "label-studio", "--top", "2")
    assert result.exit_code == 0, result.stderr
    tasks = json.loads(result.stdout)
    assert [(t["data"]["task"], t["data"]["rank"]) for t in tasks] == [
        ("label", 1),
        ("label", 2),
        ("target", 1),
        ("target", 2),
    ]
    assert "suffix .label-config.xml" in result.err


def test_rank_label_studio_writes_the_interface_beside_the_output(planted_run, tmp_path, cli):
    out = tmp_path / "suspects.json"
    result = cli("rank", planted_run.run, "-f", "label-studio", "--top", "1", "-o", out)
    assert result.exit_code == 0, result.stderr
    assert result.stdout == ""
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "suspects.json",
        "suspects.label-config.xml",
    ]
    assert len(json.loads(out.read_text())) == 2
    assert "2 tasks in" in result.err and "suspects.label-config.xml" in result.err
    assert ET.fromstring((tmp_path / "suspects.label-config.xml").read_text()).tag == "View"


def test_output_into_a_missing_folder_exits_2_with_nothing_written(
    planted_run, tmp_path, cli, files_of
):
    before = files_of(tmp_path)
    out = tmp_path / "missing" / "suspects.json"
    result = cli("rank", planted_run.run, "--format", "label-studio", "--output", out)
    assert result.exit_code == 2
    assert result.err.startswith("Error: cannot write") and "does not exist" in result.err
    assert files_of(tmp_path) == before and result.stdout == ""


@pytest.mark.parametrize("command", ["evaluate", "gate"])
def test_commands_without_suspects_to_relabel_refuse_label_studio(
    planted_run, tmp_path, cli, files_of, command
):
    truth = tmp_path / "corruption.parquet"
    args = ["--truth", truth] if command == "evaluate" else ["--junit", tmp_path / "gate.xml"]
    before = files_of(tmp_path)
    result = cli(command, planted_run.run, *args, "--format", "label-studio")
    assert result.exit_code == 2
    assert "--format label-studio exports suspects for relabelling" in result.err
    assert "ilt-audit rank" in result.err and "Traceback" not in result.stderr
    assert files_of(tmp_path) == before
