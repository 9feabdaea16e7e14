"""The grading app and the grades database: grading, consensus, graders, export, token, crashes;
and the grading flow in a real browser.

The browser test needs Debian's ``chromium`` and ``chromium-driver`` (``.ci/run`` installs them)
and is skipped, saying so, where they are absent. Set ``LENSFINDER_SCREENSHOT=path.png`` to keep
its screenshot of the page (the README's picture is made this way).
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
from fastapi.testclient import TestClient

from lensfinder.config import InspectConfig
from lensfinder.data.grades import GradeBook, consensus_grade, export_grades, read_graded
from lensfinder.errors import ConfigError, DataError
from lensfinder.inspection.app import Inspector, check_bind, create_app

LOCAL_URL = "http://127.0.0.1:8765"  # a localhost server answers requests to its own names only


def make_scan(store: Path, out: Path) -> Path:
    """A scan-like catalogue of a store with made-up scores, best first (no model needed)."""
    from lensfinder.data import open_source

    source = open_source(store)
    ids = np.asarray(source.ids)
    table = pa.table(
        {
            "rank": np.arange(1, len(ids) + 1),
            "id": ids,
            "score": np.linspace(0.99, 0.02, len(ids)),
            "ra": np.asarray(source.ra),
            "dec": np.asarray(source.dec),
        }
    )
    out.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, out / "candidates.parquet")
    return out


@pytest.fixture()
def scan(tiny_store, tmp_path) -> Path:
    return make_scan(tiny_store, tmp_path / "scan")


@pytest.fixture()
def client(scan, tiny_store):
    inspector = Inspector(scan, tiny_store, InspectConfig(stamp_pixels=64))
    with TestClient(create_app(inspector), base_url=LOCAL_URL) as test_client:
        yield test_client, inspector
    inspector.book.close()


def test_page_lists_candidates_and_renders_every_band(client):
    test_client, inspector = client
    page = test_client.get("/")
    assert page.status_code == 200 and "<b>A</b> definite lens" in page.text
    listing = test_client.get("/api/candidates", params={"grader": "ann"}).json()["candidates"]
    assert [c["id"] for c in listing] == [r["id"] for r in inspector.rows]
    first = listing[0]["id"]
    pictures = {}
    for band in ("colour", "VIS", "Y", "J", "H"):
        for stretch, zoom in (("asinh", False), ("linear", True)):
            response = test_client.get(
                f"/api/image/{first}/{band}.png", params={"stretch": stretch, "zoom": zoom}
            )
            assert response.status_code == 200 and response.content[:4] == b"\x89PNG"
            pictures[band, stretch] = response.content
    assert pictures["VIS", "asinh"] != pictures["VIS", "linear"]  # the toggle changes the picture
    assert test_client.get(f"/api/image/{first}/K.png").status_code == 422
    detail = test_client.get(f"/api/candidates/{first}", params={"grader": "ann"}).json()
    assert detail["scan"]["rank"] == 1 and detail["catalogue"]  # catalogue quantities shown


def test_grades_consensus_two_graders_and_filters(client, tmp_path):
    test_client, inspector = client
    ids = [r["id"] for r in inspector.rows]

    def grade(grader: str, candidate: int, letter: str, notes: str = "") -> dict:
        body = {"id": candidate, "grade": letter, "grader": grader, "notes": notes}
        response = test_client.post("/api/grades", json=body)
        assert response.status_code == 200, response.text
        return response.json()

    grade("ann", ids[0], "A", "clear arc")
    after = grade("bob", ids[0], "b")  # lower case accepted
    assert after["grades"] == {"ann": "A", "bob": "B"} and after["consensus"] == "B"
    grade("ann", ids[1], "C")
    grade("ann", ids[1], "X")  # a change of mind: the latest grade counts
    grade("bob", ids[1], "X")
    refused = test_client.post("/api/grades", json={"id": ids[2], "grade": "Q", "grader": "ann"})
    assert refused.status_code == 400 and "expected one of" in refused.json()["detail"]
    assert (
        test_client.post("/api/grades", json={"id": 1, "grade": "A", "grader": "ann"}).status_code
        == 400
    )  # not in this scan

    def listing(**params) -> list[int]:
        rows = test_client.get("/api/candidates", params={"grader": "ann", **params}).json()
        return [c["id"] for c in rows["candidates"]]

    assert listing(show="ungraded") == ids[2:]
    assert listing(show="X") == [ids[1]] and listing(show="B") == [ids[0]]
    scores = {r["id"]: r["score"] for r in inspector.rows}
    assert listing(score_min=0.5) == [i for i in ids if scores[i] >= 0.5]
    assert len(GradeBook(inspector.book.url).history()) == 5  # every grade kept

    for name in ("grades.csv", "grades.parquet"):
        path, n = (export := export_grades(inspector.book.url, tmp_path / name)).path, export.n
        assert n == 2
        table = pacsv.read_csv(path) if name.endswith(".csv") else pq.read_table(path)
        rows = {r["id"]: r for r in table.to_pylist()}
        assert rows[ids[0]]["grade"] == "B" and rows[ids[0]]["n_graders"] == 2
        assert rows[ids[0]]["notes"] == "ann: clear arc" and rows[ids[1]]["grade"] == "X"
        assert read_graded(path) == {ids[0]: "B", ids[1]: "X"}
    csv = test_client.get("/api/export.csv")
    assert csv.status_code == 200 and f'{ids[1]},"X"' in csv.text


def test_consensus_rule():
    assert consensus_grade(["A"]) == "A"
    assert consensus_grade(["A", "X"]) == "X"  # a split vote is not promoted
    assert consensus_grade(["A", "B", "X"]) == "B"
    assert consensus_grade(["A", "A", "C", "B"]) == "B"


def test_token_is_checked_on_every_request(scan, tiny_store):
    with pytest.raises(ConfigError, match="--token"):
        check_bind("0.0.0.0", None)
    check_bind("0.0.0.0", "s3cret")
    check_bind("127.0.0.1", None)
    inspector = Inspector(scan, tiny_store, InspectConfig(stamp_pixels=32))
    with TestClient(create_app(inspector, token="s3cret"), base_url=LOCAL_URL) as test_client:
        assert test_client.get("/").status_code == 401
        assert test_client.get("/", params={"token": "wrong"}).status_code == 401
        body = {"id": inspector.rows[0]["id"], "grade": "A", "grader": "eve"}
        assert test_client.post("/api/grades", json=body).status_code == 401
        assert inspector.book.history() == []
        headers = {"X-Lensfinder-Token": "s3cret"}
        assert test_client.post("/api/grades", json=body, headers=headers).status_code == 200
        first = test_client.get("/", params={"token": "s3cret"})  # the browser's first visit
        assert first.status_code == 200 and "lensfinder_token" in first.headers["set-cookie"]
        assert test_client.get("/api/export.csv").status_code == 200  # the cookie carries it
    inspector.book.close()


def test_a_grade_survives_kill_9(tmp_path):
    """A process that records a grade and is killed at once: the grade is in the database."""
    db = tmp_path / "grades.sqlite"
    code = (
        "import os, signal, sys\n"
        "from lensfinder.data.grades import GradeBook\n"
        f"GradeBook({str(db)!r}).record(42, 'ann', 'A', 'arc')\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1] / "src")}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, timeout=60)
    assert done.returncode == -signal.SIGKILL, done.stderr
    book = GradeBook(db, create=False)
    (row,) = book.history()
    assert (row.candidate_id, row.grader, row.grade, row.notes) == (42, "ann", "A", "arc")
    book.close()


def test_bad_inputs_are_one_line_errors(scan, tiny_store, tmp_path):
    with pytest.raises(DataError, match="no grades database"):
        export_grades(tmp_path / "none.sqlite", tmp_path / "g.csv")
    with pytest.raises(ConfigError, match=r"\.csv or \.parquet"):
        export_grades(tmp_path / "none.sqlite", tmp_path / "g.txt")
    with pytest.raises(DataError, match="no candidate catalogue"):
        Inspector(tmp_path, tiny_store, InspectConfig())
    bad = tmp_path / "bad.csv"
    bad.write_text("id,grade\n1,Z\n")
    with pytest.raises(DataError, match="no valid grade"):
        read_graded(bad)
    with pytest.raises(DataError, match="grader name"):
        GradeBook(tmp_path / "g.sqlite").record(1, " ", "A")


def test_cli_export_and_refusals(scan, tiny_store, tmp_path):
    from typer.testing import CliRunner

    from lensfinder.cli import app

    runner = CliRunner()
    book = GradeBook(scan / "grades.sqlite")
    book.record(7, "ann", "A")
    book.close()
    out = tmp_path / "grades.csv"
    done = runner.invoke(app, ["grades", "export", str(scan / "grades.sqlite"), "--out", str(out)])
    assert done.exit_code == 0 and "1 graded candidates" in done.output
    assert read_graded(out) == {7: "A"}
    missing = runner.invoke(app, ["grades", "export", str(tmp_path / "no.db"), "--out", str(out)])
    assert missing.exit_code == 2 and "no grades database" in missing.output
    exposed = ["inspect", str(scan), "--data", str(tiny_store), "--host", "0.0.0.0"]
    refused = runner.invoke(app, exposed, env={"LENSFINDER_TOKEN": ""})
    assert refused.exit_code == 2 and "add --token" in refused.output


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")
needs_chromium = pytest.mark.skipif(
    not (CHROMIUM and DRIVER),
    reason="headless Chromium absent: apt-get install chromium chromium-driver (.ci/run does)",
)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Wiretap:
    """ASGI middleware keeping every response body the server sends: (path, body)."""

    def __init__(self, app) -> None:
        self.app, self.sent = app, []

    async def __call__(self, scope, receive, send) -> None:
        chunks: list[bytes] = []

        async def keep(message) -> None:
            if message["type"] == "http.response.body":
                chunks.append(message.get("body", b""))
                if not message.get("more_body"):
                    self.sent.append((scope.get("path"), b"".join(chunks)))
            await send(message)

        await self.app(scope, receive, keep if scope["type"] == "http" else send)


@contextlib.contextmanager
def serving(
    scan: Path, data: Path, cfg: InspectConfig, wiretap: list | None = None
) -> Iterator[tuple[str, Inspector]]:
    """The app over ``scan`` and ``data`` served by uvicorn on a free localhost port, in a
    thread: ``(its URL, the Inspector)``; every response body goes into ``wiretap``, if given."""
    import uvicorn

    inspector = Inspector(scan, data, cfg)
    port = _free_port()
    app = create_app(inspector)
    if wiretap is not None:
        tap = Wiretap(app)
        tap.sent = wiretap
        app = tap
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error")
    uvicorn_server = uvicorn.Server(config)
    thread = threading.Thread(target=uvicorn_server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not uvicorn_server.started:
        assert time.monotonic() < deadline, "server did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}/", inspector
    finally:
        uvicorn_server.should_exit = True
        thread.join(timeout=10)
        inspector.book.close()


@pytest.fixture()
def server(tiny_store, tmp_path):
    scan = make_scan(tiny_store, tmp_path / "scan")
    with serving(scan, tiny_store, InspectConfig(stamp_pixels=160, grader="ann")) as served:
        yield served


@pytest.fixture()
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"):
        options.add_argument(flag)
    options.add_argument("--window-size=1100,900")
    driver = webdriver.Chrome(options=options, service=Service(executable_path=DRIVER))
    yield driver
    driver.quit()


@needs_chromium
def test_grade_with_the_keyboard_reload_and_export(server, browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    url, inspector = server
    ids = [r["id"] for r in inspector.rows]
    wait = WebDriverWait(browser, 30)

    def text(element_id: str) -> str:
        return browser.find_element(By.ID, element_id).text

    def shows(candidate: int, grade: str) -> None:
        wait.until(lambda _: text("cid") == str(candidate) and text("mygrade") == grade)

    def press(keys: str) -> None:
        browser.find_element(By.TAG_NAME, "body").send_keys(keys)

    browser.get(url)
    shows(ids[0], "-")
    wait.until(
        lambda d: d.execute_script("return document.getElementById('colour').naturalWidth") == 160
    )
    press("a")  # grade A, and on to the next
    shows(ids[1], "-")
    browser.find_element(By.ID, "notes").send_keys("spiral arms")
    press("\ue00c")  # Escape leaves the notes
    press("x")
    shows(ids[2], "-")
    press("p")
    shows(ids[1], "X")
    browser.refresh()  # the page comes back at the same candidate, its grade kept
    shows(ids[1], "X")
    assert browser.find_element(By.ID, "notes").get_attribute("value") == "spiral arms"
    press("\ue012")  # arrow left
    shows(ids[0], "A")

    screenshot = tmp_path / "inspect.png"
    browser.save_screenshot(str(screenshot))
    assert screenshot.read_bytes()[:4] == b"\x89PNG" and screenshot.stat().st_size > 20_000
    if os.environ.get("LENSFINDER_SCREENSHOT"):
        shutil.copyfile(screenshot, Path(os.environ["LENSFINDER_SCREENSHOT"]))

    export = export_grades(inspector.book.url, tmp_path / "grades.csv")
    out, n = export.path, export.n
    assert n == 2 and read_graded(out) == {ids[0]: "A", ids[1]: "X"}


def _plant_in_catalogue(layout: Path, column: str, value: str) -> int:
    """Write ``value`` into ``column`` of the first object's catalogue row; its ID."""
    from lensfinder.layout import CATALOG_NAME

    path = layout / CATALOG_NAME
    lines = path.read_text().splitlines()
    header = next(i for i, line in enumerate(lines) if not line.startswith("#"))
    names = next(csv.reader([lines[header]]))
    row = next(csv.reader([lines[header + 1]]))
    row[names.index(column)] = value
    with io.StringIO() as text:
        csv.writer(text, lineterminator="").writerow(row)
        lines[header + 1] = text.getvalue()
    path.write_text("\n".join(lines) + "\n")
    return int(float(row[names.index("ID")]))


@needs_chromium
def test_hostile_catalogue_value_and_grader_name_are_shown_as_text(
    layout_factory, browser, tmp_path
):
    """Issue 19, fault 1: a catalogue cell holding an <img onerror> that would POST a forged
    grade, and a --grader name that would close the page's script, are shown as text; nothing
    of them runs and no grade is written."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    layout = layout_factory("hostile", n=4, seed=3, kinds=True)
    first = 200000
    forged = (
        "window.lensfinderPwned='catalogue';fetch('api/grades',{method:'POST',"
        "headers:{'Content-Type':'application/json'},"
        f"body:JSON.stringify({{id:{first},grade:'X',grader:'mallory'}})}})"
    )
    hostile_cell = f'<img src=x onerror="{forged}">'
    assert _plant_in_catalogue(layout, "kind", hostile_cell) == first
    hostile_grader = "</script><script>window.lensfinderPwned='grader'</script>"
    scan = make_scan(layout, tmp_path / "scan")
    cfg = InspectConfig(stamp_pixels=64, grader=hostile_grader)
    wait = WebDriverWait(browser, 30)
    with serving(scan, layout, cfg) as (url, inspector):
        assert inspector.rows[0]["id"] == first
        browser.get(url)
        wait.until(lambda d: d.find_element(By.ID, "cid").text == str(first))
        time.sleep(1.5)  # time for an injected request to arrive, were there one
        assert inspector.book.history() == []  # no forged grade
        assert browser.execute_script("return window.lensfinderPwned === undefined")
        cells = [c.text for c in browser.find_elements(By.CSS_SELECTOR, "#quantities td")]
        assert hostile_cell in cells  # the cell is shown, as text
        assert not browser.find_elements(By.CSS_SELECTOR, "#quantities img")
        assert browser.find_element(By.ID, "grader").get_attribute("value") == hostile_grader
        browser.find_element(By.TAG_NAME, "body").send_keys("b")  # a real grade still works
        wait.until(lambda _: len(inspector.book.history()) == 1)
        (row,) = inspector.book.history()
        assert (row.candidate_id, row.grader, row.grade) == (first, hostile_grader, "B")
        browser.find_element(By.TAG_NAME, "body").send_keys("p")
        wait.until(lambda d: d.find_element(By.ID, "mygrade").text == "B")
        assert browser.find_element(By.ID, "others").text == f"{hostile_grader}:B"
        assert browser.execute_script("return window.lensfinderPwned === undefined")


@needs_chromium
def test_a_grader_grading_sentinels_sees_nothing_that_gives_them_away(
    tiny_store, layout_factory, browser, tmp_path
):
    """Issue 24: the blind queue in a real browser, with sentinels at a high rate. Every item
    shows the same text and pictures of the same size whatever it is, the view key changes the
    colour picture, and no response the browser got names a sentinel or says what it is."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    from lensfinder.config import GradingConfig

    sentinel_layout = layout_factory("sentinels", n=8, seed=11, first_id=900000)
    scan = make_scan(tiny_store, tmp_path / "scan")
    grading = GradingConfig(sentinel_rate=0.3, skill_block=4)
    cfg = InspectConfig(stamp_pixels=96, grader="ann", sentinels=str(sentinel_layout),
                        grading=grading)  # fmt: skip
    wire: list[tuple[str, bytes]] = []
    wait = WebDriverWait(browser, 30)
    seen: list[tuple[str, str, tuple]] = []  # (kind, what the page shows, picture sizes)
    with serving(scan, tiny_store, cfg, wire) as (url, inspector):
        # Seeded: the system's randomness could serve 14 items without a sentinel (0.7^14, ~1%)
        inspector.tokens.rng = random.Random(5)
        browser.get(url)
        for n in range(14):
            wait.until(lambda d, n=n: d.find_element(By.ID, "position").text == f"item {n + 1}")
            token = inspector.tokens.pending("ann")
            wait.until(
                lambda d, t=token: all(
                    d.execute_script(
                        f"const i = document.getElementById('{band}');"
                        "return i.complete && i.naturalWidth > 0 && i.src.includes(arguments[0])",
                        t,
                    )
                    for band in ("colour", "VIS", "Y", "J", "H")
                )
            )
            sizes = tuple(
                browser.execute_script(f"return document.getElementById('{b}').naturalWidth")
                for b in ("colour", "VIS", "Y", "J", "H")
            )
            shown = browser.execute_script(
                "const a = document.querySelector('aside').cloneNode(true);"
                "a.querySelector('#me').textContent = '';"
                "return a.innerText + '|' + document.getElementById('colour').src"
                ".replace(arguments[0], 'TOKEN')",
                token,
            )
            item = inspector.tokens.item(token)
            seen.append((item.kind, shown, sizes))
            if n == 0:  # the colour view key: another picture of the same item
                before = browser.find_element(By.ID, "colour").get_attribute("src")
                browser.find_element(By.TAG_NAME, "body").send_keys("v")
                wait.until(lambda d: d.find_element(By.ID, "view").text == "asinh")
                assert browser.find_element(By.ID, "colour").get_attribute("src") != before
                browser.find_element(By.TAG_NAME, "body").send_keys("vvv")  # back to vis-nisp
                wait.until(lambda d: d.find_element(By.ID, "view").text == "vis-nisp")
            browser.find_element(By.TAG_NAME, "body").send_keys("a" if n % 2 else "x")
        wait.until(lambda d: d.find_element(By.ID, "position").text == "item 15")
        kinds = [kind for kind, _, _ in seen]
        assert "sentinel" in kinds and "candidate" in kinds
        assert len({(shown, sizes) for _, shown, sizes in seen}) == 1  # all look the same
        assert seen[0][2] == (96,) * 5
        assert "hidden" in seen[0][1] and "200000" not in seen[0][1]  # no ID shown at all
        n_sentinels = kinds.count("sentinel")
        assert len(inspector.book.sentinel_history()) == n_sentinels
        assert len(inspector.book.history()) == len(kinds) - n_sentinels
        me = browser.find_element(By.ID, "me").text
        assert me.startswith("graded 14") and "as of 12 grades" in me
    sentinel_ids = [str(i).encode() for i in inspector.sentinels.ids.values()]
    assert any(path.startswith("/api/item/") for path, _ in wire)
    for path, body in wire:
        assert b"sentinel" not in body.lower() and b"is_lens" not in body, path
        assert not any(i in body for i in sentinel_ids), path
        if path == "/api/queue":
            assert set(json.loads(body)) == {"token", "graded"}
