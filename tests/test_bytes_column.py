"""Images stored in the table (issue 22, items 4 and 6): a Parquet table with a Hugging Face
``Image`` column and a ``save_to_disk`` folder are audited without extracting a file, under the
same rules as files: checked before training, refused by their header, named by row id and
column, and carried over untouched by ``fix``.
"""

from __future__ import annotations

import json
import struct
import zlib
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from helpers_data import KINDS, hf_table, png_bytes, whole_batch, write_saved

from ilt_audit.dataset import open_dataset
from ilt_audit.dataset.card import load_card
from ilt_audit.dataset.files import read_image, scan_key
from ilt_audit.errors import CardError

TRAIN = ("--epochs", "2", "--device", "cpu", "--workers", "0", "--batch-size", "8")

CARD = """\
table = "{table}"
row_ids = true

[input]
type = "image"
column = "image"

[tasks.label]
type = "classification"
column = "label"
classes = ["ant", "bee", "cat"]
"""


def _parquet(folder: Path, table: pa.Table | None = None, **options) -> Path:
    """A Parquet export and a card for it; returns the card."""
    folder.mkdir(parents=True, exist_ok=True)
    pq.write_table(table if table is not None else hf_table(**options), folder / "train.parquet")
    card = folder / "card.toml"
    card.write_text(CARD.format(table="train.parquet"), encoding="utf-8")
    return card


def _with_cell(table: pa.Table, column: str, row: int, value: dict | None) -> pa.Table:
    cells = table.column(column).to_pylist()
    cells[row] = value
    index = table.schema.get_field_index(column)
    return table.set_column(index, column, pa.array(cells, table.schema.field(column).type))


def _refused(result, *fragments: str) -> None:
    assert result.exit_code == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    for fragment in fragments:
        assert fragment in result.err, result.err


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width`` x ``height`` pixels over a few bytes of data."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IEND", b"")


# --- the whole workflow ---------------------------------------------------------------------


def test_init_train_rank_report_fix_on_a_parquet_export(tmp_path, cli):
    data = tmp_path / "data"
    data.mkdir()
    table = hf_table(n=12)
    pq.write_table(table, data / "train.parquet")
    card = data / "card.toml"

    result = cli("init", data / "train.parquet", "--out", card)
    assert result.exit_code == 0, result.stderr
    assert "row_ids = true" in card.read_text()
    assert 'classes = ["ant", "bee", "cat"]' in card.read_text()
    assert "ClassLabel" in result.out and "row numbers" in result.out

    run = tmp_path / "run"
    result = cli("train", card, "--out", run, *TRAIN)
    assert result.exit_code == 0, result.stderr
    result = cli("rank", run, "--format", "json", "--top", "12")
    assert result.exit_code == 0, result.stderr
    ranked = json.loads(result.stdout)
    assert {r["id"] for r in ranked} == {f"{i:02d}" for i in range(12)}
    assert {r["label"] for r in ranked} == set(KINDS)  # the ClassLabel's names, not 0, 1, 2

    result = cli("report", run, "--out", tmp_path / "report.html")
    assert result.exit_code == 0, result.stderr
    page = (tmp_path / "report.html").read_text()
    assert page.count("data:image/png;base64,") >= 5  # thumbnails decoded from the bytes

    decisions = tmp_path / "decisions.csv"
    decisions.write_text("id,task,decision,value\n03,label,relabel,cat\n05,label,drop,\n")
    assert cli("review", run, "--import", decisions, "--reviewer", "me").exit_code == 0
    result = cli("fix", card, "--decisions", run, "--out", tmp_path / "fixed")
    assert result.exit_code == 0, result.stderr

    fixed = pq.read_table(tmp_path / "fixed" / "train.parquet")
    kept = [i for i in range(12) if i != 5]
    assert fixed.column("id").to_pylist() == [f"{i:02d}" for i in kept]  # ids outlive the drop
    assert fixed.schema.field("image").type == table.schema.field("image").type
    assert fixed.column("image").to_pylist() == table.column("image").take(kept).to_pylist()
    labels = table.column("label").to_pylist()
    assert fixed.column("label").to_pylist() == [2 if i == 3 else labels[i] for i in kept]
    assert fixed.schema.metadata[b"huggingface"] == table.schema.metadata[b"huggingface"]
    new_card = (tmp_path / "fixed" / "card.toml").read_text()
    assert "allow_outside_paths" not in new_card  # every image is in the table itself
    source = open_dataset(tmp_path / "fixed" / "card.toml")
    assert source.manifest.frame["label"].tolist()[3] == "cat"


def test_a_save_to_disk_folder_is_read_memory_mapped_and_trains(tmp_path, cli):
    table = hf_table(n=16, size=64, mask=True)
    folder = write_saved(tmp_path / "data" / "train", table, shards=2)
    card = tmp_path / "data" / "card.toml"

    result = cli("init", folder, "--out", card)
    assert result.exit_code == 0, result.stderr
    text = card.read_text()
    assert 'table = "train"' in text and "row_ids = true" in text
    assert 'type = "segmentation"' in text  # the stored masks, sampled from their bytes

    before = pa.total_allocated_bytes()
    source = open_dataset(card)
    stored = sum(b.size for c in table.column("image").chunks for b in c.buffers() if b)
    assert pa.total_allocated_bytes() - before < stored / 2  # the bytes stay in the files
    assert source.manifest.stored["image"].data.num_chunks == 2  # one per shard

    result = cli("train", card, "--out", tmp_path / "run", *TRAIN)
    assert result.exit_code == 0, result.stderr


def test_worker_processes_decode_the_rows_they_are_given(tmp_path):
    card = _parquet(tmp_path / "data", n=10)
    data = open_dataset(card).load(workers=0)
    alone = whole_batch(data, workers=0)
    forked = whole_batch(data, workers=2)
    assert torch_equal(alone["input"], forked["input"])
    assert alone["input"].shape == (10, 3, 16, 16)
    first = data.manifest.source("image", 0).getvalue()
    assert first == hf_table(n=10).column("image")[0]["bytes"].as_py()


def torch_equal(a, b) -> bool:
    return bool((a == b).all())


# --- broken rows: named by row id and column, exit 2, nothing written -----------------------


@pytest.mark.parametrize(
    ("cell", "fragments"),
    [
        pytest.param(
            {"bytes": b"not an image at all", "path": "x.png"},
            ["cannot decode the image", "its bytes stored in the table"],
            id="bytes-that-are-not-an-image",
        ),
        pytest.param(
            {"bytes": _png_header_only(10_000, 10_000), "path": "bomb.png"},
            ["claims 10000x10000 pixels", "refused before decoding"],
            id="over-the-size-limit-by-header",
        ),
        pytest.param(
            {"bytes": None, "path": None},
            ["neither the file's bytes nor a path to it"],
            id="null-bytes-and-no-path",
        ),
        pytest.param(
            {"bytes": None, "path": "missing.png"},
            ["file not found", "'missing.png'"],
            id="null-bytes-and-a-missing-file",
        ),
    ],
)
def test_a_bad_stored_image_is_refused_before_training(tmp_path, cli, cell, fragments):
    table = _with_cell(hf_table(n=12), "image", 4, cell)
    card = _parquet(tmp_path / "data", table)
    run = tmp_path / "run"
    result = cli("train", card, "--out", run, *TRAIN)
    _refused(result, "train.parquet", "row id '04'", "column 'image'", *fragments)
    assert not run.exists()


def test_a_row_may_name_its_file_instead_of_storing_it(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    pixels = np.full((16, 16, 3), 200, np.uint8)
    (data / "own.png").write_bytes(png_bytes(pixels))
    table = _with_cell(hf_table(n=12), "image", 2, {"bytes": None, "path": "own.png"})
    source = open_dataset(_parquet(data, table))
    assert source.manifest.source("image", 2) == data / "own.png"
    assert (read_image(source.manifest.source("image", 2)) == 200).all()
    recorded = source.files.to_pandas()
    assert recorded.loc[2, "path"] == "own.png" and recorded.loc[2, "mtime_ns"] > 0
    assert recorded.loc[3, "path"] == "" and recorded.loc[3, "mtime_ns"] == 0


def test_a_stored_mask_is_checked_like_a_file(tmp_path, cli):
    table = hf_table(n=12, mask=True)
    bad = np.full((16, 16), 7, np.uint8)  # outside the 3 classes
    table = _with_cell(table, "mask", 6, {"bytes": png_bytes(bad), "path": None})
    card = _parquet(tmp_path / "data", table)
    card.write_text(
        card.read_text() + '\n[tasks.seg]\ntype = "segmentation"\ncolumn = "mask"\nclasses = 3\n'
    )
    result = cli("train", card, "--out", tmp_path / "run", *TRAIN)
    _refused(result, "row id '06'", "column 'mask'", "mask value 7 is outside the classes 0..2")


def test_a_class_index_outside_the_class_label_names_is_quoted(tmp_path, cli):
    table = hf_table(n=12)
    labels = table.column("label").to_pylist()
    labels[8] = -1  # datasets' "no label"
    table = table.set_column(1, "label", pa.array(labels, pa.int64()))
    card = _parquet(tmp_path / "data", table)
    result = cli("train", card, "--out", tmp_path / "run", *TRAIN)
    _refused(result, "row id '08'", "column 'label'", "outside the class set", "'-1'")


def test_row_ids_and_an_id_column_exclude_each_other(tmp_path):
    card = _parquet(tmp_path / "data")
    card.write_text('id = "image"\n' + card.read_text())
    with pytest.raises(CardError, match="remove 'id' or 'row_ids'"):
        open_dataset(card)


# --- what a run records of its inputs -------------------------------------------------------


def test_changed_bytes_change_the_fingerprints_that_resume_and_the_scan_cache_use(tmp_path):
    card = _parquet(tmp_path / "data", n=12)
    before = open_dataset(card)
    key, sha = scan_key(before.manifest), before.card.sha256()
    other = png_bytes(np.zeros((16, 16, 3), np.uint8))
    table = _with_cell(hf_table(n=12), "image", 7, {"bytes": other, "path": "00007.png"})
    pq.write_table(table, card.parent / "train.parquet")
    after = open_dataset(card)
    assert after.card.sha256() != sha
    assert scan_key(after.manifest) not in (key, None)


def test_resume_refuses_a_table_whose_stored_image_changed(tmp_path, cli):
    card = _parquet(tmp_path / "data", n=12)
    run = tmp_path / "run"
    assert cli("train", card, "--out", run, "--epochs", "1", *TRAIN[2:]).exit_code == 0
    other = png_bytes(np.zeros((16, 16, 3), np.uint8))
    table = _with_cell(hf_table(n=12), "image", 7, {"bytes": other, "path": "00007.png"})
    pq.write_table(table, card.parent / "train.parquet")
    result = cli("train", card, "--out", run, "--resume", *TRAIN)
    _refused(result, "changed since this run started")


def test_a_saved_folder_counts_every_data_file_in_the_card_hash(tmp_path):
    folder = write_saved(tmp_path / "data" / "train", hf_table(n=12), shards=2)
    card = tmp_path / "data" / "card.toml"
    card.write_text(CARD.format(table="train"), encoding="utf-8")
    sha = open_dataset(card).card.sha256()
    shard = folder / "data-00001-of-00002.arrow"
    content = bytearray(shard.read_bytes())
    content[content.rfind(b"IDAT") + 8] ^= 0xFF  # one byte of the last shard's last image
    shard.write_bytes(bytes(content))
    assert load_card(card).sha256() != sha


@pytest.mark.parametrize("damaged", ["state.json", "dataset_info.json"])
def test_json_nested_too_deeply_is_refused_or_ignored_with_a_clear_message(tmp_path, cli, damaged):
    folder = write_saved(tmp_path / "data" / "train", hf_table(n=12))
    (folder / damaged).write_text("[" * 100_000, encoding="utf-8")
    result = cli("init", folder, "--out", tmp_path / "card.toml")
    if damaged == "state.json":  # the list of data files: nothing can be read without it
        _refused(result, str(folder / "state.json"), "nested too deeply")
        assert "recursion" not in result.err and not (tmp_path / "card.toml").exists()
    else:  # the features: read as if the folder said none (the columns are inferred)
        assert result.exit_code == 0, result.stderr


def test_a_dataset_dict_folder_names_the_split_to_give(tmp_path, cli):
    root = tmp_path / "data"
    write_saved(root / "train", hf_table(n=12))
    (root / "dataset_dict.json").write_text('{"splits": ["train"]}')
    result = cli("init", root, "--out", tmp_path / "card.toml")
    _refused(result, "DatasetDict", "train")
    assert not (tmp_path / "card.toml").exists()


def test_init_leaves_out_an_audio_column_and_takes_a_stored_mask_as_a_task(tmp_path, cli):
    table = hf_table(n=12, mask=True)
    sound = pa.array([{"bytes": b"RIFF....WAVE", "path": "a.wav"}] * 12, table.schema[0].type)
    metadata = json.loads(table.schema.metadata[b"huggingface"])
    metadata["info"]["features"]["sound"] = {"_type": "Audio"}
    table = table.append_column("sound", sound)
    table = table.replace_schema_metadata({"huggingface": json.dumps(metadata)})
    (tmp_path / "data").mkdir()
    pq.write_table(table, tmp_path / "data" / "train.parquet")
    card = tmp_path / "data" / "card.toml"
    result = cli("init", tmp_path / "data" / "train.parquet", "--out", card)
    assert result.exit_code == 0, result.stderr
    assert "its feature is Audio" in result.out
    text = card.read_text()
    assert "sound" not in text
    assert '[tasks.mask]\ntype = "segmentation"\ncolumn = "mask"\nclasses = 3' in text


def test_corrupt_stores_the_corrupted_masks_in_the_table_and_keeps_the_rest(tmp_path, cli):
    table = hf_table(n=12, mask=True)
    card = _parquet(tmp_path / "data", table)
    card.write_text(
        card.read_text() + '\n[tasks.seg]\ntype = "segmentation"\ncolumn = "mask"\nclasses = 3\n'
    )
    out = tmp_path / "corrupted"
    result = cli("corrupt", card, "--task", "seg", "--fraction", "0.5", "--out", out)
    assert result.exit_code == 0, result.stderr
    truth = pq.read_table(out / "corruption.parquet").to_pandas()
    changed = set(truth.loc[truth.corrupted, "id"])
    assert len(changed) == 6
    new = pq.read_table(out / "train.parquet")
    assert new.column("id").to_pylist() == [f"{i:02d}" for i in range(12)]
    assert new.column("image").to_pylist() == table.column("image").to_pylist()  # untouched
    old_masks, new_masks = table.column("mask").to_pylist(), new.column("mask").to_pylist()
    for i, (old, cell) in enumerate(zip(old_masks, new_masks, strict=True)):
        assert cell["bytes"] is not None  # stored in the table, as the original was
        assert (cell["bytes"] != old["bytes"]) == (f"{i:02d}" in changed)
    assert not list(out.glob("seg/*"))  # no loose file beside the table
    source = open_dataset(out / "card.toml")
    assert source.card.id == "id" and not source.card.row_ids
    source.load(workers=0)  # every stored mask decodes and fits its image


def test_a_card_may_name_one_arrow_file(tmp_path):
    folder = write_saved(tmp_path / "data" / "train", hf_table(n=12), shards=2)
    card = tmp_path / "data" / "card.toml"
    card.write_text(CARD.format(table="train/data-00001-of-00002.arrow"), encoding="utf-8")
    manifest = open_dataset(card).manifest
    assert manifest.ids == [f"{i}" for i in range(6)]  # the second shard's six rows, renumbered
    assert manifest.frame["label"].tolist() == [KINDS[i % 3] for i in range(6, 12)]
    assert folder.is_dir()
