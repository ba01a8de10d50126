"""`ilt-audit review`: the web app over a run's suspects, driven in a real browser, and its
decisions file, as `fix` then reads them."""

from __future__ import annotations

import base64
import io
import json
import os
import re
import shutil
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from html import unescape
from pathlib import Path

import pandas as pd
import pytest
from browser import require_chromium
from conftest import CLASSES, tiny_config, write_image_dataset
from PIL import Image

from ilt_audit.review.app import (
    PER_PAGE,
    PICTURE,
    Filters,
    Review,
    bind,
    open_review,
    review_app,
    serve,
    url_of,
)
from ilt_audit.review.decisions import DecisionStore
from ilt_audit.review.instances import EXTRA_COLOUR, MISSING_COLOUR
from ilt_audit.training.loop import train


@dataclass(frozen=True)
class Served:
    url: str
    review: Review
    card: Path
    run: Path


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A two-epoch run on 12 32x32 images with a class, two numbers, a mask and a depth map."""
    root = tmp_path_factory.mktemp("review")
    card = write_image_dataset(root / "data", size=32)
    train(card, root / "run", config=tiny_config(epochs=2))
    return card, root / "run"


def _start(run: Path, card: Path, **options: object) -> Served:
    review = open_review(run, reviewer="tester", **options)  # type: ignore[arg-type]
    sock = bind("127.0.0.1", 0)
    threading.Thread(target=serve, args=(review_app(review), sock), daemon=True).start()
    url = url_of(sock)
    for _ in range(100):  # until it answers
        try:
            urllib.request.urlopen(url, timeout=5)
            break
        except (urllib.error.URLError, ConnectionError):
            time.sleep(0.05)
    return Served(url, review, card, run)


@pytest.fixture
def served(trained: tuple[Path, Path], tmp_path: Path) -> Iterator[Served]:
    """The app on a copy of the run (decisions of one test never reach another), every
    instance listed."""
    card, run = trained
    shutil.copytree(run, tmp_path / "run")
    yield _start(tmp_path / "run", card, top="100%")


def _post(served: Served, body: object, **headers: str) -> tuple[int, dict[str, object]]:
    sent = {"Content-Type": "application/json", "X-Review-Token": served.review.token}
    sent.update(headers)
    request = urllib.request.Request(
        served.url + "api/decisions", data=json.dumps(body).encode(), headers=sent
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        text = error.read()
        return error.code, json.loads(text) if text.startswith(b"{") else {"error": text.decode()}


def _get(url: str, **headers: str) -> tuple[int, str, dict[str, str]]:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers)) as response:
            return response.status, response.read().decode(), dict(response.headers)
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode(errors="replace"), dict(error.headers)


# --- in a real browser -----------------------------------------------------------------------


@pytest.fixture
def browser() -> Iterator[object]:
    from playwright.sync_api import sync_playwright  # the test extra has it

    chromium = require_chromium()  # skipped without Debian's chromium, unless CI requires it
    with sync_playwright() as driver:
        launched = driver.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        yield launched
        launched.close()


def _watch(page: object) -> list[str]:
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)  # type: ignore[attr-defined]
    page.on("pageerror", lambda e: errors.append(str(e)))  # type: ignore[attr-defined]
    return errors


def test_keyboard_decisions_are_saved_survive_a_reload_and_fix_applies_them(
    served: Served, browser: object, cli: object, tmp_path: Path
) -> None:
    from playwright.sync_api import expect

    page = browser.new_page(viewport={"width": 1200, "height": 900})  # type: ignore[attr-defined]
    errors = _watch(page)
    page.goto(served.url + "tasks/colour")
    cards = page.locator("article.suspect")
    total = served.review.counts()["colour"]["total"]
    ids = [cards.nth(i).get_attribute("data-id") for i in range(3)]
    given = [cards.nth(i).locator(".label").inner_text() for i in range(3)]

    page.keyboard.press("k")  # keep the first
    expect(cards.nth(0).locator(".status")).to_have_text("saved: keep (tester)")
    page.keyboard.press("r")  # relabel the second: its form opens with the class list focused
    select = cards.nth(1).locator("select")
    expect(select).to_be_focused()
    other = next(c for c in ("red", "green", "blue") if c != given[1])
    page.keyboard.type(other)  # a focused list picks the option its typed name starts
    expect(select).to_have_value(other)
    page.keyboard.press("Enter")
    expect(cards.nth(1).locator(".status")).to_have_text(f"saved: relabel → {other} (tester)")
    page.keyboard.press("d")  # drop the third
    expect(cards.nth(2).locator(".status")).to_have_text("saved: drop (tester)")
    expect(page.locator("#left-colour")).to_have_text(f"{total - 3} left of {total}")

    page.reload()
    cards = page.locator("article.suspect")
    assert [cards.nth(i).get_attribute("data-decision") for i in range(3)] == [
        "keep",
        "relabel",
        "drop",
    ]
    expect(cards.nth(1).locator(".status")).to_contain_text(f"relabel → {other}")
    expect(page.locator("#left-colour")).to_have_text(f"{total - 3} left of {total}")

    page.goto(served.url + "tasks/geometry")  # numbers, typed
    page.keyboard.press("r")
    fields = page.locator("article.suspect").nth(0).locator("input[name=value]")
    fields.nth(0).fill("0.25")
    fields.nth(1).fill("0.75")
    page.keyboard.press("Enter")
    expect(page.locator("article.suspect").nth(0).locator(".status")).to_have_text(
        "saved: relabel → [0.25, 0.75] (tester)"
    )
    geometry_id = page.locator("article.suspect").nth(0).get_attribute("data-id")

    page.goto(served.url + "tasks/seg")  # a mask: the prediction replaces it
    page.locator("#opacity").fill("30")
    page.keyboard.press("r")
    first = page.locator("article.suspect").nth(0)
    expect(first.locator(".status")).to_have_text("saved: relabel → prediction (tester)")
    seg_id = first.get_attribute("data-id")
    page.keyboard.press("?")
    expect(page.locator("dialog#help")).to_be_visible()
    page.keyboard.press("Escape")
    page.screenshot(path=str(tmp_path / "review.png"))
    if os.environ.get("ILT_AUDIT_SCREENSHOT"):  # how docs/review.png is made
        page.goto(served.url + "tasks/seg")
        page.screenshot(path=os.environ["ILT_AUDIT_SCREENSHOT"])
    assert errors == []

    result = cli("fix", served.card, "--decisions", served.run, "--out", tmp_path / "fixed")
    assert result.exit_code == 0, result.stderr
    fixed = pd.read_csv(tmp_path / "fixed" / "manifest.csv").set_index("id")
    assert ids[0] in fixed.index and fixed.loc[ids[0], "colour"] == given[0]
    assert fixed.loc[ids[1], "colour"] == other
    assert ids[2] not in fixed.index
    assert fixed.loc[geometry_id, ["cx", "cy"]].tolist() == [0.25, 0.75]
    original = pd.read_csv(served.card.parent / "manifest.csv").set_index("id")
    assert fixed.loc[seg_id, "mask"] != original.loc[seg_id, "mask"]
    assert (tmp_path / "fixed" / fixed.loc[seg_id, "mask"]).is_file()


def test_two_clients_deciding_at_once_lose_nothing(served: Served, browser: object) -> None:
    from playwright.sync_api import expect

    pages = [browser.new_page() for _ in range(2)]  # type: ignore[attr-defined]
    for page, task in zip(pages, ("colour", "depth"), strict=True):
        page.goto(served.url + f"tasks/{task}")
    ids = served.review.manifest.ids
    with ThreadPoolExecutor(8) as pool:  # and a burst of posts from elsewhere, meanwhile
        burst = pool.map(
            lambda i: _post(
                served, {"id": ids[i % len(ids)], "task": "geometry", "decision": "keep"}
            ),
            range(40),
        )
        for _ in range(3):
            for page in pages:
                page.keyboard.press("k")
        statuses = [s for s, _ in burst]
    for page in pages:
        cards = page.locator("article.suspect")
        for i in range(3):
            expect(cards.nth(i).locator(".status")).to_have_text("saved: keep (tester)")
    assert statuses == [200] * 40
    history = DecisionStore(served.run).history()
    assert len(history) == 40 + 6
    assert sorted(history.task.value_counts().items()) == [
        ("colour", 3),
        ("depth", 3),
        ("geometry", 40),
    ]


def test_the_page_shows_each_labels_history_and_the_last_decision(
    served: Served, browser: object
) -> None:
    from playwright.sync_api import expect

    page = browser.new_page()  # type: ignore[attr-defined]
    errors = _watch(page)
    page.goto(served.url + "tasks/colour")
    card = page.locator("article.suspect").nth(0)
    history = card.locator("details.history")
    expect(history).to_be_hidden()  # nothing decided yet
    page.keyboard.press("k")  # keep the first card
    expect(card.locator(".status")).to_have_text("saved: keep (tester)")
    expect(history.locator("li")).to_have_count(1)  # appended by the page on the reply
    expect(history.locator("li").nth(0)).to_contain_text("tester: keep")
    instance = card.get_attribute("data-id")
    other = {"id": instance, "task": "colour", "decision": "drop", "reviewer": "<i>bob</i>"}
    assert _post(served, other)[0] == 200  # another reviewer, in another browser
    page.reload()
    card = page.locator("article.suspect").nth(0)
    expect(card.locator(".status")).to_have_text("saved: drop (<i>bob</i>)")
    card.locator("details.history summary").click()
    expect(card.locator("details.history li")).to_have_count(2)
    expect(card.locator("details.history li").nth(1)).to_contain_text("<i>bob</i>: drop")
    assert errors == []


# --- the server's rules ----------------------------------------------------------------------


@pytest.fixture
def served_planted(planted_run: object, tmp_path: Path) -> Served:
    """The app on a copy of the features run with planted errors, every instance listed."""
    shutil.copytree(planted_run.run, tmp_path / "run")  # type: ignore[attr-defined]
    return _start(tmp_path / "run", planted_run.card, top="100%")  # type: ignore[attr-defined]


def test_a_page_lists_one_page_of_suspects_not_the_whole_list(served_planted: Served) -> None:
    served = served_planted
    status, html, _ = _get(served.url + "tasks/label")
    assert status == 200
    n = len(served.review.manifest.ids)
    assert html.count('class="suspect') == PER_PAGE < n
    assert f"Page 1 of {-(-n // PER_PAGE)}" in html
    ranked = re.findall(r'data-id="([^"]+)"', html)
    status, second, _ = _get(served.url + "tasks/label?page=2")
    assert set(ranked).isdisjoint(re.findall(r'data-id="([^"]+)"', second))


def test_filters_by_class_and_score(served: Served) -> None:
    _, html, _ = _get(served.url + "tasks/colour?class=red")
    labels = re.findall(r'<dd class="label">([^<]*)</dd>', html)
    assert labels and set(labels) == {"red"}
    scores = [float(s) for s in re.findall(r'<span class="score">p_wrong ([-0-9.]+)</span>', html)]
    middle = sorted(scores)[len(scores) // 2]
    _, html, _ = _get(served.url + f"tasks/colour?class=red&min={middle}")
    kept = [float(s) for s in re.findall(r'<span class="score">p_wrong ([-0-9.]+)</span>', html)]
    assert kept and all(s >= middle - 1e-3 for s in kept) and len(kept) < len(scores) + 1


# --- why a suspect is one ---------------------------------------------------------------------


def _articles(html: str) -> dict[str, str]:
    """Each suspect's card on a page, by id."""
    parts = html.split("<article ")[1:]
    return {re.search(r'data-id="([^"]+)"', part).group(1): part for part in parts}  # type: ignore[union-attr]


def _why(article: str) -> str:
    return unescape(article.split('<dd class="why">', 1)[1].split("</dd>", 1)[0])


def test_a_suspects_card_says_why_the_class_the_network_prefers_and_the_residual(
    planted_run: object, served_planted: Served
) -> None:
    served = served_planted
    _, html, _ = _get(served.url + "tasks/label")
    cards = _articles(html)
    for row_id in planted_run.flipped:  # type: ignore[attr-defined]
        given = unescape(cards[row_id].split('<dd class="label">', 1)[1].split("</dd>", 1)[0])
        found = re.fullmatch(
            r"the network prefers ([abc]) \((>?)(\d+)%\) over the label ([abc]) .*",
            _why(cards[row_id]),
        )
        assert found and found.group(4) == given, _why(cards[row_id])
        assert found.group(1) == CLASSES[(CLASSES.index(given) - 1) % 3]  # the true class
        assert int(found.group(3)) > 50
    assert re.search(
        r"Estimated error rate of label: [\d.]+% \(95% interval [\d.]+%–[\d.]+%\)", html
    )
    _, html, _ = _get(served.url + "tasks/target")
    cards = _articles(html)
    for row_id in planted_run.shifted:  # type: ignore[attr-defined]
        why = _why(cards[row_id])
        found = re.match(
            r"far from the prediction: ([\d.]+) label SDs from the network's prediction "
            r"\(typical label: ([\d.e-]+) SD\) · label − prediction now: y0 \+([\d.]+)",
            why,
        )
        assert found, why
        assert float(found.group(1)) > 10 * float(found.group(2)) and float(found.group(3)) > 4


def test_a_mask_suspects_card_outlines_where_the_network_and_the_mask_disagree(
    served: Served,
) -> None:
    _, html, _ = _get(served.url + "tasks/seg")
    assert "outlined where the network and the mask disagree" in html
    pictures = re.findall(
        r'<img class="picture outline" src="data:image/png;base64,([^"]+)" '
        r'alt="where the network and the seg mask of [^"]+ disagree"',
        html,
    )
    assert len(pictures) == PER_PAGE
    for picture in pictures:
        with Image.open(io.BytesIO(base64.b64decode(picture))) as image:
            assert image.size == (PICTURE, PICTURE)
            colours = {tuple(c) for _, c in image.convert("RGB").getcolors(1 << 16)}
        assert colours & {MISSING_COLOUR, EXTRA_COLOUR}  # a two-epoch network disagrees somewhere
    assert all(_why(card) != "–" for card in _articles(html).values())


def test_a_review_file_from_before_the_evidence_is_built_again(served: Served) -> None:
    with sqlite3.connect(served.run / "review.sqlite") as db:  # the layout of 0.x: no evidence
        db.execute("DROP TABLE suspects")
        db.execute(
            "CREATE TABLE suspects (task TEXT NOT NULL, rank INTEGER NOT NULL, id TEXT NOT NULL, "
            "score REAL, label TEXT NOT NULL, class TEXT, trajectory TEXT NOT NULL, "
            "PRIMARY KEY (task, rank))"
        )
        signature = json.dumps(
            {"epochs": list(served.review.run.epochs), "score": "p_wrong", "top": "100%"}
        )
        db.execute("UPDATE suspects_meta SET value = ? WHERE key = 'signature'", (signature,))
    reopened = open_review(served.run, top="100%")
    assert reopened.counts() == served.review.counts()
    found, _ = reopened.page("colour", 1, Filters())
    assert found and all(json.loads(f["evidence"])["task"] == "colour" for f in found)


def test_a_decision_needs_the_page_token_json_and_a_known_host(served: Served) -> None:
    instance = served.review.manifest.ids[0]
    body = {"id": instance, "task": "colour", "decision": "keep"}
    assert _post(served, body, **{"X-Review-Token": "guess"})[0] == 403
    assert _post(served, body, **{"Content-Type": "text/plain"})[0] == 415
    assert _post(served, body, Host="evil.example")[0] == 400
    assert DecisionStore(served.run).history().empty


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ({"id": "nobody", "task": "colour", "decision": "keep"}, "not in the manifest"),
        ({"id": "i000", "task": "colour", "decision": "relabel", "value": "mauve"}, "mauve"),
        ({"id": "i000", "task": "nope", "decision": "keep"}, "not in the card"),
        ({"id": "i000", "task": "geometry", "decision": "relabel", "value": [1]}, "2 finite"),
        ({"id": "i000", "task": "colour", "decision": "burn"}, "not one of"),
        (["not", "an", "object"], "JSON object"),
    ],
)
def test_a_decision_that_does_not_fit_is_refused_and_not_recorded(
    served: Served, body: object, fragment: str
) -> None:
    status, answer = _post(served, body)
    assert status == 422 and fragment in str(answer["error"])
    assert DecisionStore(served.run).history().empty


@pytest.mark.parametrize(
    "path",
    [
        "static/..%2F..%2Fcli.py",
        "static/../../../../etc/passwd",
        "static/%2e%2e/review.py",
        "tasks/..%2F..%2Fetc%2Fpasswd",
        "tasks/nope",
        "card.toml",
        "run/config.json",
    ],
)
def test_no_path_outside_the_app_is_served(served: Served, path: str) -> None:
    status, text, _ = _get(served.url + path)
    assert status == 404
    assert "root:" not in text and "import" not in text


def test_pages_carry_a_policy_that_allows_no_other_origin(served: Served) -> None:
    status, _, headers = _get(served.url + "tasks/colour")
    assert status == 200
    policy = headers["content-security-policy"]
    assert "default-src 'none'" in policy and "script-src 'self'" in policy
    assert _get(served.url + "static/review.js")[0] == 200


def test_untrusted_text_in_the_data_is_shown_as_text(
    make_image_card: object, tmp_path: Path
) -> None:
    card = make_image_card(tmp_path / "data", size=16)  # type: ignore[operator]
    table = pd.read_csv(card.parent / "manifest.csv")
    table.loc[0, "id"] = '<img src=x onerror="alert(1)">'
    table.to_csv(card.parent / "manifest.csv", index=False)
    train(card, tmp_path / "run", config=tiny_config(epochs=1))
    served = _start(tmp_path / "run", card, top="100%")
    for task in ("colour", "seg"):
        _, html, _ = _get(served.url + f"tasks/{task}")
        assert "<img src=x" not in html
        assert "&lt;img src=x onerror=&#34;alert(1)&#34;&gt;" in html


# --- the command -----------------------------------------------------------------------------


def test_export_then_import_carries_every_decision(
    served: Served, cli: object, tmp_path: Path
) -> None:
    ids = served.review.manifest.ids
    for body in (
        {"id": ids[0], "task": "colour", "decision": "relabel", "value": "blue"},
        {"id": ids[1], "task": "geometry", "decision": "relabel", "value": [1.5, -2]},
        {"id": ids[2], "task": "seg", "decision": "drop"},
    ):
        assert _post(served, body)[0] == 200
    result = cli("review", served.run, "--export", tmp_path / "d.csv")
    assert result.exit_code == 0, result.stderr
    exported = pd.read_csv(tmp_path / "d.csv")
    assert list(exported.decision) == ["relabel", "relabel", "drop"]
    other = tmp_path / "other"
    shutil.copytree(served.run, other)
    (other / "review.sqlite").unlink()
    for extra in other.glob("review.sqlite-*"):
        extra.unlink()
    result = cli("review", other, "--import", tmp_path / "d.csv")
    assert result.exit_code == 0, result.stderr
    again = DecisionStore(other).latest()
    assert again[["id", "task", "decision", "value"]].equals(
        DecisionStore(served.run).latest()[["id", "task", "decision", "value"]]
    )


def test_a_bad_decisions_file_exits_2_naming_line_and_column_and_records_nothing(
    served: Served, cli: object, tmp_path: Path
) -> None:
    ids = served.review.manifest.ids
    bad = tmp_path / "bad.csv"
    bad.write_text(
        f"id,task,decision,value\n{ids[0]},colour,keep,\n{ids[1]},colour,relabel,mauve\n",
        encoding="utf-8",
    )
    result = cli("review", served.run, "--import", bad)
    assert result.exit_code == 2
    assert "line 3" in result.err and "'value'" in result.err and "mauve" in result.err
    assert "Traceback" not in result.stderr
    assert DecisionStore(served.run).history().empty


def test_export_into_a_missing_folder_exits_2(served: Served, cli: object, tmp_path: Path) -> None:
    result = cli("review", served.run, "--export", tmp_path / "missing" / "d.csv")
    assert result.exit_code == 2 and "missing" in result.err


def test_a_port_in_use_or_an_unknown_task_exits_2(served: Served, cli: object) -> None:
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen(1)
    port = taken.getsockname()[1]
    try:
        result = cli("review", served.run, "--port", port, "--no-browser")
        assert result.exit_code == 2 and "choose another --port" in result.err
    finally:
        taken.close()
    result = cli("review", served.run, "--port", 0, "--task", "nope", "--no-browser")
    assert result.exit_code == 2 and "'nope'" in result.err


def test_the_suspects_are_ranked_once_and_kept(
    served: Served, monkeypatch: pytest.MonkeyPatch
) -> None:
    import ilt_audit.review.app as review_module

    def fail(*args: object, **kwargs: object) -> object:
        raise AssertionError("ranked again")

    monkeypatch.setattr(review_module, "rank", fail)
    reopened = open_review(served.run, top="100%")  # same epochs, score and share: kept
    assert reopened.counts() == served.review.counts()
    monkeypatch.undo()
    fewer = open_review(served.run, top="2")  # another share: ranked again
    assert {c["total"] for c in fewer.counts().values()} == {2}


def test_starting_the_app_imports_no_torch(served: Served) -> None:
    code = (
        "import sys\n"
        "from ilt_audit.review.app import open_review, review_app\n"
        f"review_app(open_review({str(served.run)!r}))\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_an_import_without_reviewers_records_the_one_who_imports(
    served: Served, cli: object, tmp_path: Path
) -> None:
    ids = served.review.manifest.ids
    plain = tmp_path / "plain.csv"
    plain.write_text(f"id,task,decision\n{ids[0]},colour,keep\n", encoding="utf-8")
    result = cli("review", served.run, "--import", plain, "--reviewer", "ana")
    assert result.exit_code == 0, result.stderr
    assert DecisionStore(served.run).latest().reviewer.tolist() == ["ana"]


def test_the_model_is_loaded_once_for_every_page(
    served: Served, monkeypatch: pytest.MonkeyPatch
) -> None:
    import ilt_audit.training.loop as training

    loads = []
    real = training.load_model

    def counted(*args: object, **kwargs: object) -> object:
        loads.append(1)
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(training, "load_model", counted)
    served.review._predictor = None  # as a fresh server (the fixture's first request loaded it)
    served.review._predicted.clear()
    for task in ("colour", "seg", "depth", "colour"):
        status, html, _ = _get(served.url + f"tasks/{task}?page=2")
        assert status == 200 and "prediction over input" in html or "predicted" in html
    assert len(loads) == 1
