"""Untrusted input (SPEC 8, issue 10 items 3 and 5): paths stay inside the card's folder unless
the card opts out; hostile files, cards and tables end in one ``Error:`` line and exit 2, and so
does an output that cannot be written. Never a traceback, never exit 1, nothing written.
"""

from __future__ import annotations

import dataclasses
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from helpers_data import make_features_card, make_image_card

from ilt_audit.corruption.planting import TRUTH_SCHEMA
from ilt_audit.dataset.card import MAX_PIXELS, load_card
from ilt_audit.dataset.files import read_depth, read_image, scan_key
from ilt_audit.dataset.manifest import load_manifest
from ilt_audit.errors import CardError

OUTSIDE = "leads outside the card's folder"
OPT_IN = "set allow_outside_paths = true in the card"
TRAIN = ("--epochs", "1", "--device", "cpu", "--workers", "0")


def _refused(result, *fragments: str) -> None:
    """Exit 2 with exactly one ``Error:`` line holding every fragment, and no traceback."""
    assert result.exit_code == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("Error: "), result.stderr
    for fragment in fragments:
        assert fragment in result.err


def _train_refused(cli, card: Path, tmp_path: Path, *fragments: str) -> None:
    out = tmp_path / "run"
    _refused(cli("train", card, "--out", out, *TRAIN), *fragments)
    assert not out.exists()


def _set_cell(card: Path, row: int, column: str, value: str) -> None:
    path = card.parent / "manifest.csv"
    frame = pd.read_csv(path, dtype=str)
    frame.loc[row, column] = value
    frame.to_csv(path, index=False)


def _move_out(card: Path, name: str, *, link: bool = False) -> Path:
    """Move a file of the dataset out of the card's folder (leaving a link to it, if asked)."""
    outside = card.parent.parent / f"outside-{name.replace('/', '-')}"
    os.replace(card.parent / name, outside)
    if link:
        (card.parent / name).symlink_to(outside, target_is_directory=outside.is_dir())
    return outside


def _opt_in(card: Path) -> None:
    card.write_text("allow_outside_paths = true\n" + card.read_text())


# --- paths stay inside the card's folder (item 3) ---------------------------------------------


@pytest.mark.parametrize("column", ["image", "mask", "depth"])
def test_an_absolute_path_is_refused(tmp_path, cli, column):
    card = make_image_card(tmp_path / "data")
    folder = {"image": "images", "mask": "masks", "depth": "depth"}[column]
    name = f"s02.{'npy' if column == 'depth' else 'png'}"
    target = (card.parent / folder / name).resolve()  # the very file, but named absolutely
    _set_cell(card, 2, column, str(target))
    where = ("manifest.csv", "row id 's02'", f"column {column!r}")
    _train_refused(cli, card, tmp_path, *where, OUTSIDE, OPT_IN, repr(str(target)))


def test_a_dot_dot_path_is_refused(tmp_path, cli):
    card = make_image_card(tmp_path / "data")
    (tmp_path / "elsewhere.png").write_bytes((card.parent / "images" / "s03.png").read_bytes())
    _set_cell(card, 3, "image", "../elsewhere.png")
    _train_refused(
        cli, card, tmp_path, "row id 's03'", "column 'image'", OUTSIDE, "'../elsewhere.png'"
    )


def test_dot_dot_inside_a_name_is_not_a_parent(tmp_path, cli):
    card = make_image_card(tmp_path / "data")
    os.rename(card.parent / "images" / "s03.png", card.parent / "images" / "s03..png")
    _set_cell(card, 3, "image", "images/s03..png")
    result = cli("train", card, "--out", tmp_path / "run", *TRAIN)
    assert result.exit_code == 0, result.stderr


def test_a_symbolic_link_out_of_the_folder_is_refused(tmp_path, cli):
    card = make_image_card(tmp_path / "data")
    _move_out(card, "masks/s04.png", link=True)
    _train_refused(cli, card, tmp_path, "row id 's04'", "column 'mask'", "symbolic link", OUTSIDE)


def test_a_linked_folder_out_of_the_folder_is_refused(tmp_path, cli):
    card = make_image_card(tmp_path / "data")
    _move_out(card, "depth", link=True)
    _train_refused(cli, card, tmp_path, "row id 's00'", "column 'depth'", "linked folder")


def test_a_symbolic_link_inside_the_folder_is_followed(tmp_path, cli):
    card = make_image_card(tmp_path / "data")
    image = card.parent / "images" / "s05.png"
    image.unlink()
    image.symlink_to(card.parent / "images" / "s06.png")
    result = cli("train", card, "--out", tmp_path / "run", *TRAIN)
    assert result.exit_code == 0, result.stderr


def test_the_card_opts_in_for_data_that_lives_elsewhere(tmp_path, cli):
    card = make_image_card(tmp_path / "data")
    _set_cell(card, 1, "image", str(_move_out(card, "images/s01.png")))
    _set_cell(card, 2, "mask", f"../{_move_out(card, 'masks/s02.png').name}")
    _move_out(card, "depth/s03.npy", link=True)
    _opt_in(card)
    result = cli("train", card, "--out", tmp_path / "run", *TRAIN)
    assert result.exit_code == 0, result.stderr


def test_an_absolute_path_under_the_opt_in_is_fingerprinted_like_any(tmp_path, cli):
    card = make_image_card(tmp_path / "data")
    outside = _move_out(card, "images/s01.png")
    _set_cell(card, 1, "image", str(outside))
    _opt_in(card)
    run = tmp_path / "run"
    assert cli("train", card, "--out", run, *TRAIN).exit_code == 0
    outside.write_bytes((card.parent / "images" / "s02.png").read_bytes() + b"changed")
    result = cli("train", card, "--out", run, "--resume", "--epochs", "2", "--workers", "0")
    _refused(result, "row id 's01'", "column 'image'")


def test_the_opt_in_must_be_a_boolean(tmp_path, cli):
    card = make_features_card(tmp_path / "data")
    card.write_text('allow_outside_paths = "yes"\n' + card.read_text())
    _train_refused(cli, card, tmp_path, "card.toml", "'allow_outside_paths' must be true or false")


@pytest.mark.parametrize("table", ["../manifest.csv", "/tmp/manifest.csv"])
def test_the_table_stays_inside_too(tmp_path, cli, table):
    card = make_features_card(tmp_path / "data")
    card.write_text(card.read_text().replace('table = "manifest.csv"', f'table = "{table}"'))
    _train_refused(cli, card, tmp_path, "card.toml", f"table {table!r}", OUTSIDE)


def test_a_linked_table_out_of_the_folder_is_refused(tmp_path, cli):
    card = make_features_card(tmp_path / "data")
    _move_out(card, "manifest.csv", link=True)
    _train_refused(cli, card, tmp_path, "card.toml", "table 'manifest.csv'", "symbolic link")


def test_the_path_check_is_vectorised_and_names_the_first_bad_row(tmp_path):
    card = make_image_card(tmp_path / "data")
    frame = pd.read_csv(card.parent / "manifest.csv", dtype=str)
    frame = pd.concat([frame] * 5000, ignore_index=True)  # 60,000 rows, all but two fine
    frame["id"] = [f"x{i}" for i in range(len(frame))]
    frame.loc[41_234, "depth"] = "depth/../../x.npy"
    frame.loc[50_000, "image"] = "/etc/passwd"
    frame.to_csv(card.parent / "manifest.csv", index=False)
    with pytest.raises(CardError, match=r"row id 'x50000': column 'image': the path leads"):
        load_manifest(card, check_files=False)
    frame.loc[50_000, "image"] = "images/s00.png"
    frame.to_csv(card.parent / "manifest.csv", index=False)
    with pytest.raises(CardError, match=r"row id 'x41234': column 'depth': the path leads"):
        load_manifest(card, check_files=False)


def test_a_cached_check_proves_only_what_its_card_allowed(tmp_path):
    card = make_image_card(tmp_path / "data")
    manifest = load_manifest(card)
    opened = dataclasses.replace(
        manifest, card=dataclasses.replace(manifest.card, allow_outside_paths=True)
    )
    assert scan_key(manifest) != scan_key(opened)


def test_a_link_swapped_in_after_a_cached_check_is_refused_while_training(tmp_path, cli):
    card = make_image_card(tmp_path / "data")
    assert cli("train", card, "--out", tmp_path / "first", *TRAIN).exit_code == 0  # check cached
    _move_out(card, "images/s07.png", link=True)  # the same file, size and time: cache matches
    result = cli("train", card, "--out", tmp_path / "second", *TRAIN)
    _refused(result, "row id 's07'", "column 'image'", "symbolic link", OUTSIDE)


def test_corrupt_writes_a_card_that_opts_in_and_says_why_and_the_workflow_runs(tmp_path, cli):
    card = make_image_card(tmp_path / "data")
    noisy = tmp_path / "noisy"
    result = cli(
        "corrupt", card, "--task", "shape", "--task", "seg", "--fraction", "0.25", "--out", noisy
    )
    assert result.exit_code == 0, result.stderr
    text = (noisy / "card.toml").read_text()
    assert "allow_outside_paths = true" in text
    assert "# allow_outside_paths: the inputs are the original dataset's files in" in text
    assert load_card(noisy / "card.toml").allow_outside_paths
    run = tmp_path / "runs" / "noisy"
    assert cli("train", noisy / "card.toml", "--out", run, *TRAIN).exit_code == 0
    result = cli("evaluate", run, "--truth", noisy / "corruption.parquet", "--format", "csv")
    assert result.exit_code == 0, result.stderr
    assert "shape" in result.stdout and "seg" in result.stdout


def test_corrupt_does_not_launder_a_link_out_of_the_folder(tmp_path, cli):
    card = make_image_card(tmp_path / "data")
    _move_out(card, "images/s02.png", link=True)
    noisy = tmp_path / "noisy"
    result = cli("corrupt", card, "--task", "shape", "--fraction", "0.25", "--out", noisy)
    _refused(result, "row id 's02'", "column 'image'", "symbolic link")
    assert not noisy.exists()


@pytest.mark.parametrize("predictions", [True, False], ids=["predictions", "labels-only"])
def test_report_reads_files_through_the_same_rule(tmp_path, cli, predictions):
    card = make_image_card(tmp_path / "data")
    run = tmp_path / "run"
    assert cli("train", card, "--out", run, *TRAIN).exit_code == 0
    if not predictions:  # the report then reads the files itself, for the thumbnails
        (run / "checkpoint.pt").unlink()
    for name in ("masks/s00.png", "images/s00.png"):  # swapped for links after training
        _move_out(card, name, link=True)
    out = tmp_path / "report.html"
    result = cli("report", run, "--out", out, "--top", "12")
    _refused(result, "manifest.csv", "symbolic link", OUTSIDE)
    assert not out.exists()


# --- hostile files, cards and tables (item 5) --------------------------------------------------


def _png_header_only(width: int, height: int, colour_type: int = 2) -> bytes:
    """A PNG whose header claims ``width`` x ``height`` pixels over a few bytes of data."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    header = struct.pack(">IIBBBBB", width, height, 8, colour_type, 0, 0, 0)
    data = zlib.compress(b"\x00" * 1024)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", data) + chunk(b"IEND", b"")
    )


def _npy_header_only(shape: tuple[int, ...], descr: str = "<f4") -> bytes:
    """A .npy file whose header claims ``shape`` over a few bytes of data."""
    header = f"{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}"
    header += " " * (63 - (10 + len(header)) % 64) + "\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header.encode() + bytes(64)


@pytest.mark.parametrize(
    ("file", "data", "fragments"),
    [
        pytest.param(
            "images/s02.png",
            _png_header_only(50_000, 50_000),
            ["column 'image'", "refused before decoding", "2500000000 pixels"],
            id="png-bomb-50000x50000",
        ),
        pytest.param(
            "images/s02.png",
            _png_header_only(10_000, 10_000),  # over the limit, under twice it: Pillow only warns
            ["column 'image'", "claims 10000x10000 pixels", "refused before decoding"],
            id="png-bomb-10000x10000",
        ),
        pytest.param(
            "masks/s02.png",
            _png_header_only(20_000, 20_000, colour_type=0),
            ["column 'mask'", "refused before decoding"],
            id="mask-bomb",
        ),
        pytest.param(
            "depth/s02.npy",
            _npy_header_only((1_000_000, 1_000_000)),  # 10^12 values
            ["column 'depth'", "map is 1000000x1000000 but the image is 16x16"],
            id="npy-claiming-10^12-values",
        ),
        pytest.param(
            "depth/s02.npy",
            _npy_header_only((16, 16))[:-64],
            ["column 'depth'", "the file is shorter than the (16, 16) array its header claims"],
            id="npy-shorter-than-its-header",
        ),
        pytest.param(
            "depth/s02.npy",
            _npy_header_only((16, 16), "|O"),
            ["column 'depth'", "expected a numeric array, got object"],
            id="npy-of-objects",
        ),
    ],
)
def test_a_file_is_refused_by_its_header_before_decoding(tmp_path, cli, file, data, fragments):
    card = make_image_card(tmp_path / "data")
    (card.parent / file).write_bytes(data)
    _train_refused(cli, card, tmp_path, "manifest.csv", "row id 's02'", *fragments)


def test_readers_without_an_image_size_still_check_the_header(tmp_path):
    path = tmp_path / "huge.npy"
    path.write_bytes(_npy_header_only((1_000_000, 1_000_000)))
    with pytest.raises(ValueError, match=f"more than the {MAX_PIXELS:,} allowed"):
        read_depth(path)
    path = tmp_path / "huge.png"
    path.write_bytes(_png_header_only(10_000, 10_000))
    with pytest.raises(ValueError, match="refused before decoding"):
        read_image(path)


@pytest.mark.parametrize(
    "text",
    [
        "a = " + "[" * 100_000 + "]" * 100_000 + "\n",
        "a = " + "{b = " * 5_000 + "1" + "}" * 5_000 + "\n",
    ],
    ids=["nested-arrays", "nested-inline-tables"],
)
def test_a_deeply_nested_card_is_refused(tmp_path, cli, text):
    card = tmp_path / "data" / "card.toml"
    card.parent.mkdir()
    card.write_text(text)
    _train_refused(cli, card, tmp_path, "card.toml", "nested too deeply")


def test_a_card_asking_for_a_huge_image_size_is_refused(tmp_path, cli):
    card = make_image_card(tmp_path / "data")
    text = card.read_text().replace('column = "image"', 'column = "image"\nsize = [60000, 60000]')
    card.write_text(text)
    _train_refused(cli, card, tmp_path, "card.toml", "[input] size 60000x60000 is more than")


def _parquet_card(tmp_path: Path, column: str, values: pa.Array) -> Path:
    card = make_features_card(tmp_path / "data", table="manifest.parquet")
    path = card.parent / "manifest.parquet"
    table = pq.read_table(path)
    table = table.set_column(table.column_names.index(column), column, values)
    pq.write_table(table.replace_schema_metadata(None), path)
    return card


def _invalid_utf8_strings(values: list[bytes]) -> pa.Array:
    """A string array holding bytes that are not UTF-8 (pyarrow's constructors would refuse)."""
    offsets = np.cumsum([0, *map(len, values)]).astype(np.int32)
    buffers = [None, pa.py_buffer(offsets.tobytes()), pa.py_buffer(b"".join(values))]
    return pa.Array.from_buffers(pa.string(), len(values), buffers)


IDS = [f"r{i:03d}".encode() for i in range(40)]


@pytest.mark.parametrize(
    ("column", "values", "fragments"),
    [
        pytest.param(
            "f1",
            pa.array([[1.0, 2.0]] * 40),
            ["row id 'r000'", "column 'f1'", "the feature is not a finite number", "[1.0, 2.0]"],
            id="list-feature",
        ),
        pytest.param(
            "f2",
            pa.array([{"a": 1.0}] * 40),
            ["row id 'r000'", "column 'f2'", "the feature is not a finite number"],
            id="struct-feature",
        ),
        pytest.param(
            "t0",
            pa.array([b"\x00\x01"] * 40, pa.binary()),
            ["row id 'r000'", "column 't0'", "the target is not a finite number"],
            id="binary-target",
        ),
        pytest.param(
            "id",
            _invalid_utf8_strings([*IDS[:7], b"r\xff\xfe", *IDS[8:]]),
            ["row 8", "column 'id'", "not valid UTF-8 text", "b'r\\xff\\xfe'"],
            id="string-ids-not-utf8",
        ),
        pytest.param(
            "id",
            pa.array([*IDS[:5], b"\xc3(", *IDS[6:]], pa.binary()),
            ["row 6", "column 'id'", "not valid UTF-8 text"],
            id="binary-ids-not-utf8",
        ),
        pytest.param(
            "kind",
            _invalid_utf8_strings([b"ant"] * 9 + [b"b\xffe"] + [b"cat"] * 30),
            ["row id 'r009'", "column 'kind'", "not valid UTF-8 text"],
            id="labels-not-utf8",
        ),
    ],
)
def test_a_hostile_parquet_manifest_is_refused(tmp_path, cli, column, values, fragments):
    card = _parquet_card(tmp_path, column, values)
    _train_refused(cli, card, tmp_path, "manifest.parquet", *fragments)


def test_a_parquet_binary_id_column_in_utf8_is_read_as_text(tmp_path):
    card = _parquet_card(tmp_path, "id", pa.array(IDS, pa.binary()))
    assert load_manifest(card).ids[:2] == ["r000", "r001"]  # previously "b'r000'"


def test_an_unused_binary_column_may_hold_any_bytes(tmp_path):
    card = _parquet_card(tmp_path, "note", pa.array([b"\xff\xd8\xff"] * 40, pa.binary()))
    assert len(load_manifest(card)) == 40


@pytest.mark.parametrize(
    ("table", "old", "new", "fragments"),
    [
        ("manifest.csv", b"r003", b"r\xff03", ["line 5", "column 'id'"]),
        ("manifest.csv", b"r007,", b"r007\xfe,", ["line 9", "column 'id'"]),
        ("manifest.csv", b"row 12", b"row \xe9 12", ["line 14 (row id 'r012')", "column 'note'"]),
        ("manifest.csv", b"kind", b"k\xffnd", ["line 1 (a column name)"]),
        ("manifest.jsonl", b'"r004"', b'"r\xc0\x80"', ["line 5", "column 'id'"]),
        ("manifest.jsonl", b"row 6", b"row \xff", ["line 7 (row id 'r006')", "column 'note'"]),
    ],
    ids=["csv-id", "csv-id-end", "csv-other-column", "csv-header", "jsonl-id", "jsonl-column"],
)
def test_text_that_is_not_utf8_names_its_line_and_column(tmp_path, cli, table, old, new, fragments):
    card = make_features_card(tmp_path / "data", table=table)
    path = card.parent / table
    data = path.read_bytes()
    assert old in data
    path.write_bytes(data.replace(old, new, 1))
    _train_refused(cli, card, tmp_path, table, "not valid UTF-8 text", *fragments)


# --- outputs that cannot be written (item 5) ---------------------------------------------------

MISSING = "missing-folder"
UNWRITABLE = (
    "/proc/ilt-audit-test.csv"  # the kernel's folder: no file can be made there, not even by root
)


def _outputs(tmp_path: Path) -> list[tuple[Path, str]]:
    missing = tmp_path / MISSING / "out.csv"
    return [
        (missing, f"the folder {missing.parent} does not exist"),
        (Path(UNWRITABLE), UNWRITABLE),
    ]


@pytest.fixture
def truth(planted_run, tmp_path) -> Path:
    ids = [f"r{i:03d}" for i in range(60)]
    table = pa.table(
        [ids, ["label"] * 60, [i in planted_run.flipped for i in ids]], schema=TRUTH_SCHEMA
    )
    path = tmp_path / "corruption.parquet"
    pq.write_table(table, path)
    return path


@pytest.mark.parametrize(
    ("command", "options"),
    [
        ("rank", ["--output"]),
        ("evaluate", ["--output"]),
        ("gate", ["-f", "csv", "--output"]),
        ("gate", ["-f", "json", "--output"]),
        ("report", ["--out"]),
    ],
    ids=["rank", "evaluate", "gate-csv", "gate-json", "report"],
)
def test_an_output_that_cannot_be_written_is_one_error(
    cli, planted_run, truth, tmp_path, command, options
):
    extra = {"evaluate": ["--truth", truth], "gate": ["--max-suspect", "50%"]}.get(command, [])
    for path, message in _outputs(tmp_path):
        result = cli(command, planted_run.run, *extra, *options, path)
        _refused(result, f"cannot write {path}", message)
        assert not (tmp_path / MISSING).exists()


@pytest.mark.parametrize("option", ["--junit", "--summary"])
def test_gate_checks_every_output_before_writing_any(cli, planted_run, tmp_path, option):
    written = tmp_path / "written.out"
    other = "--summary" if option == "--junit" else "--junit"
    for path, message in _outputs(tmp_path):
        result = cli("gate", planted_run.run, "--max-suspect", "50%", other, written, option, path)
        _refused(result, f"cannot write {path}", message)
        if path.parent.name == MISSING:  # refused before any work: the other file is not written
            assert not written.exists()
        assert not (tmp_path / MISSING).exists()
