"""Hidden sentinels in the grading queue (issue 24): nothing on the wire tells a sentinel from a
candidate, grading them gives each grader a skill, candidates get a posterior and retire, the
team page is the lead's alone, and the export carries it all; on SQLite and on PostgreSQL.

The browser half (a grader grading sentinels in headless Chromium) is in ``test_inspect.py``.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow.csv as pacsv
import pytest
from fastapi.testclient import TestClient

from lensfinder.config import GradingConfig, InspectConfig
from lensfinder.data.grades import read_graded_posteriors
from lensfinder.errors import DataError
from lensfinder.inspection.app import Inspector, create_app
from lensfinder.testing import cli
from test_faults_grading import postgres_url  # noqa: F401  (a fixture)
from test_inspect import LOCAL_URL, make_scan

SENTINEL_FIRST_ID = 900000
LEAD = "lead-s3cret"
FORBIDDEN = (b"sentinel", b"is_lens", b"truth")  # words the grader's wire never carries


class RecordingClient(TestClient):
    """A test client that keeps every response (the grader's whole wire)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.seen: list[Any] = []

    def request(self, *args: Any, **kwargs: Any) -> Any:  # type: ignore[override]
        response = super().request(*args, **kwargs)
        self.seen.append(response)
        return response


@pytest.fixture()
def sentinel_layout(layout_factory) -> Path:
    return layout_factory("sentinels", n=8, seed=11, first_id=SENTINEL_FIRST_ID)


def grading_config(sentinels: Path, db: str | None = None) -> InspectConfig:
    grading = GradingConfig(sentinel_rate=0.3, retire_below=0.1, retire_above=0.9, skill_block=5)
    return InspectConfig(stamp_pixels=32, sentinels=str(sentinels), db=db, grading=grading)


@pytest.fixture()
def served(tiny_store, sentinel_layout, tmp_path) -> Iterator[tuple[RecordingClient, Inspector]]:
    scan = make_scan(tiny_store, tmp_path / "scan")
    inspector = Inspector(scan, tiny_store, grading_config(sentinel_layout))
    # Which items are sentinels is drawn at random (SystemRandom in service): seeded here, so a
    # short queue cannot by chance serve no sentinel at all.
    inspector.tokens.rng = random.Random(5)
    with RecordingClient(create_app(inspector, lead_token=LEAD), base_url=LOCAL_URL) as client:
        yield client, inspector
    inspector.book.close()


def grade_the_queue(client: TestClient, inspector: Inspector, grader: str, honest: bool):
    """Grade every item the queue serves ``grader``, fetching its pictures as the page does;
    sentinels graded right (``honest``) or wrong, candidates by their score (``honest``) or all
    C. Returns the items served, in order."""
    served = []
    step = client.get("/api/queue", params={"grader": grader}).json()
    while step["token"] is not None:
        token = step["token"]
        item = inspector.tokens.item(token)  # the server's side: what the page never sees
        served.append(item)
        for band in ("colour", "VIS", "H"):
            picture = client.get(f"/api/item/{token}/{band}.png", params={"view": "mtf"})
            assert picture.status_code == 200 and picture.content[:4] == b"\x89PNG"
        if item.kind == "sentinel":
            truth = inspector.sentinels.is_lens[item.key]
            letter = "A" if truth == honest else "X"
        elif honest:
            letter = "B" if inspector.scores[item.key] > 0.5 else "X"
        else:
            letter = "C"
        body = {"token": token, "grade": letter, "grader": grader, "notes": ""}
        response = client.post("/api/queue", json=body)
        assert response.status_code == 200, response.text
        step = response.json()
    return served


def check_the_wire(client: RecordingClient, inspector: Inspector) -> None:
    """No response the grader got names a sentinel or says what an item is."""
    sentinel_ids = [str(i).encode() for i in inspector.sentinels.ids.values()]
    for response in client.seen:
        body = response.content.lower()
        assert not any(word in body for word in FORBIDDEN), response.url
        assert not any(i in response.content for i in sentinel_ids), response.url
        if response.url.path == "/api/queue":
            assert set(response.json()) == {"token", "graded"}  # the same keys for every item


def test_queue_hides_sentinels_learns_skill_and_retires(served):
    client, inspector = served
    page = client.get("/")
    assert 'data-mode="queue"' in page.text  # with sentinels, the page opens on the blind queue
    ann = grade_the_queue(client, inspector, "ann", honest=True)
    sentinels = [i for i in ann if i.kind == "sentinel"]
    candidates = [i for i in ann if i.kind == "candidate"]
    assert sentinels and candidates and len({i.key for i in sentinels}) == len(sentinels)
    assert {i.key for i in candidates} == set(inspector.index)  # every candidate, once
    # The same pictures for the same item whatever the token; one token per (grader, item).
    assert len({inspector.tokens.token("ann", i) for i in ann}) == len(ann)
    assert client.get("/api/queue", params={"grader": "ann"}).json() == {
        "token": None,
        "graded": len(ann),
    }
    check_the_wire(client, inspector)

    weighed = inspector.assessment()
    skill = weighed.skills["ann"]
    assert skill.lens_seen + skill.dud_seen == len(sentinels)
    assert skill.p_lens.mean > 0.75 or skill.lens_seen == 0  # all right: above the prior
    retired = {c for c, verdict in weighed.verdicts.items() if verdict is not None}
    assert retired, "an honest grader's grades retire some candidates"
    # Bob's queue: what is not retired, and never a sentinel twice.
    bob = grade_the_queue(client, inspector, "bob", honest=False)
    bob_candidates = {i.key for i in bob if i.kind == "candidate"}
    assert bob_candidates and not bob_candidates & retired
    # wrong on every sentinel: below the prior on each kind of sentinel he was shown (which
    # kinds he gets is drawn at random, so one of the two may be unseen)
    bob_skill = inspector.assessment().skills["bob"]
    assert bob_skill.lens_seen + bob_skill.dud_seen >= 1
    assert bob_skill.p_lens.mean < 0.75 or bob_skill.lens_seen == 0
    assert bob_skill.p_not.mean < 0.75 or bob_skill.dud_seen == 0

    # Each grader sees their own skill, as of whole blocks of grades only.
    me = client.get("/api/me", params={"grader": "ann"}).json()
    assert me["graded"] == len(ann) and me["skill_as_of"] == len(ann) // 5 * 5
    assert set(me["skill"]) == {"p_lens", "p_lens_sigma", "p_not", "p_not_sigma"}
    check_the_wire(client, inspector)

    # The team page and its data: the lead's only.
    assert client.get("/api/team").status_code == 403
    assert client.get("/team").status_code == 403
    assert client.get("/api/team", headers={"X-Lensfinder-Lead": "wrong"}).status_code == 403
    page = client.get("/team", params={"lead": LEAD})
    assert page.status_code == 200 and "lensfinder_lead" in page.headers["set-cookie"]
    assert "script-src 'self'" in page.headers["content-security-policy"]
    team = client.get("/api/team").json()  # the cookie carries the lead's token
    rows = {row["grader"]: row for row in team["graders"]}
    ann_lenses = sum(inspector.sentinels.is_lens[i.key] for i in sentinels)
    assert rows["ann"]["lenses_caught"] == ann_lenses and rows["ann"]["lenses_missed"] == 0
    assert rows["ann"]["false_alarms"] == 0 and rows["bob"]["lenses_caught"] == 0
    assert team["kappa"] < 1  # bob's C grades disagree with ann's B and X
    posteriors = [c["posterior"] for c in team["candidates"]]
    assert posteriors == sorted(posteriors, reverse=True)  # most probable lenses first
    assert team["candidates"][0]["posterior"] > team["candidates"][0]["prior"]


def test_export_has_posterior_class_and_agreement(served, tmp_path):
    client, inspector = served
    grade_the_queue(client, inspector, "ann", honest=True)
    grade_the_queue(client, inspector, "bob", honest=True)
    out = tmp_path / "grades.csv"
    done = cli("grades", "export", str(inspector.book.url), "--out", str(out))
    assert done.exit_code == 0, done.output
    assert "Fleiss' kappa" in done.output and "prior: the scores of" in done.output
    table = pacsv.read_csv(out).to_pylist()
    assert {"posterior", "prior", "mean_value", "class", "agreement", "retired"} <= set(table[0])
    weighed = inspector.assessment()
    for row in table:
        assert row["posterior"] == pytest.approx(weighed.posteriors[row["id"]])
        assert row["prior"] == pytest.approx(weighed.priors[row["id"]])
    assert all(str(row["id"]) not in {str(i) for i in inspector.sentinels.ids.values()}
               for row in table)  # fmt: skip
    assert read_graded_posteriors(out) == pytest.approx({r["id"]: r["posterior"] for r in table})
    csv = client.get("/api/export.csv")
    assert b"posterior" in csv.content.splitlines()[0]


def test_lead_page_refused_without_a_lead_token(tiny_store, sentinel_layout, tmp_path):
    scan = make_scan(tiny_store, tmp_path / "scan")
    inspector = Inspector(scan, tiny_store, grading_config(sentinel_layout))
    with TestClient(create_app(inspector), base_url=LOCAL_URL) as client:
        refused = client.get("/api/team", params={"lead": ""})
        assert refused.status_code == 403 and "--lead-token" in refused.json()["detail"]
        assert client.get("/api/item/nonsense/VIS.png").status_code == 400
        too_long = client.post(
            "/api/queue", json={"token": "x" * 5000, "grade": "A", "grader": "a"}
        )
        assert too_long.status_code == 400
    inspector.book.close()


def test_sentinels_need_both_classes(tiny_store, layout_factory, tmp_path):
    scan = make_scan(tiny_store, tmp_path / "scan")
    only_lenses = layout_factory("lenses", n=4, lens_fraction=1.0, first_id=SENTINEL_FIRST_ID)
    with pytest.raises(DataError, match="known lenses and known non-lenses"):
        Inspector(scan, tiny_store, grading_config(only_lenses))


def test_postgres_sentinels_and_skill(postgres_url, tiny_store, sentinel_layout, tmp_path):  # noqa: F811
    scan = make_scan(tiny_store, tmp_path / "scan")
    inspector = Inspector(scan, tiny_store, grading_config(sentinel_layout, db=postgres_url))
    assert inspector.book.engine.dialect.name == "postgresql"
    with RecordingClient(create_app(inspector), base_url=LOCAL_URL) as client:
        served = grade_the_queue(client, inspector, "ann", honest=True)
        check_the_wire(client, inspector)
    n_sentinels = sum(i.kind == "sentinel" for i in served)
    assert len(inspector.book.sentinel_history()) == n_sentinels
    skill = inspector.assessment().skills.get("ann")
    assert n_sentinels == 0 or skill.lens_seen + skill.dud_seen == n_sentinels
    inspector.book.close()


def test_wire_check_catches_a_leak(served):
    """The wire check itself: a body naming a sentinel fails it."""
    client, inspector = served
    sentinel_id = next(iter(inspector.sentinels.ids.values()))

    class Leak:
        content = json.dumps({"id": sentinel_id}).encode()
        url = type("U", (), {"path": "/api/x"})()

    client.seen.append(Leak())
    with pytest.raises(AssertionError):
        check_the_wire(client, inspector)
