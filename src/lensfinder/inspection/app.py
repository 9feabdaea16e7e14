"""``lensfinder inspect``: a local web app to grade the ranked candidates of a scan.

FastAPI serves one page (``page.html`` with ``page.js`` and ``page.css``: keyboard-driven, no
build step) and a small JSON API; pictures are rendered on request by ``presentation`` from
the data the scan read (checked against the scan's record of it), and every grade goes straight
into the grades database (``data.grades``). The server binds to localhost; on any other
address a token is required on every request (header ``X-Lensfinder-Token``, ``?token=`` once,
after which a cookie carries it).

With ``--sentinels`` the page opens on the blind queue (``inspection.queue``): candidates in
order of expected information, known lenses and non-lenses mixed in hidden, each behind an opaque
token, with no ID, score or catalogue value shown for any; each grade updates the grader's skill
and the candidates' posteriors (``data.grades.assess``, ``data.swap``), and retired candidates
leave the queue. ``/team`` (the lead only, ``--lead-token``) shows every grader's skill.

Catalogue values and names are data, not markup: the page writes them as text only, and every
response carries a Content-Security-Policy that allows no inline script, so a hostile value in a
catalogue cannot run. A localhost server answers only requests addressed to localhost (DNS
rebinding), and refuses request bodies over ``MAX_BODY_BYTES`` with HTTP 413.
"""

from __future__ import annotations

import errno
import hmac
import html
import io
import socket
import threading
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

import numpy as np
from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from pydantic import BaseModel
from starlette.datastructures import Headers
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from lensfinder.config import InspectConfig
from lensfinder.data import swap
from lensfinder.data.grades import (
    DB_NAME,
    GRADES,
    MAX_NOTES,
    Assessment,
    GradeBook,
    assess,
    check_grade,
    check_grader,
    check_notes,
    consensus_table,
)
from lensfinder.data.identity import index_of_ids
from lensfinder.einstein import THETA_E, THETA_E_SIGMA, format_theta_e
from lensfinder.errors import ConfigError, DataError, LensfinderError
from lensfinder.inspection.queue import MAX_TOKEN, Item, SentinelSet, TokenBook, pick
from lensfinder.presentation import PAGE_ASSETS
from lensfinder.presentation.composite import VIEWS, asinh_stretch, draw_view, resize_square
from lensfinder.scan.catalog import read_candidates
from lensfinder.scan.gallery import open_scanned_data

HERE = PAGE_ASSETS  # the page and its static files
PAGE = HERE / "page.html"
TEAM_PAGE = HERE / "team.html"
STATIC = {  # served beside the pages
    "page.js": "text/javascript",
    "page.css": "text/css",
    "team.js": "text/javascript",
}
BANDS = ("colour", "VIS", "Y", "J", "H")
LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")
TOKEN_HEADER = "x-lensfinder-token"
TOKEN_COOKIE = "lensfinder_token"
LEAD_HEADER = "x-lensfinder-lead"
LEAD_COOKIE = "lensfinder_lead"
View = Literal["vis-nisp", "asinh", "mtf", "vis"]
Stretch = Literal["asinh", "linear"]
Band = Literal["colour", "VIS", "Y", "J", "H"]
# The largest request body: a grade with MAX_NOTES characters of notes, each escaped in JSON
# (up to 12 bytes: a surrogate pair), fits with room to spare.
MAX_BODY_BYTES = 16 * MAX_NOTES
# Script and style only from this server's own files (no inline script, no eval), pictures and
# API calls only from itself, never framed by another site.
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; form-action 'none'; base-uri 'none'; frame-ancestors 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}
_SECURITY_HEADER_BYTES = [(k.lower().encode(), v.encode()) for k, v in SECURITY_HEADERS.items()]
_OURS = {name for name, _ in _SECURITY_HEADER_BYTES}


class GradeIn(BaseModel):
    id: int
    grade: str
    grader: str
    notes: str = ""


class QueueGradeIn(BaseModel):
    token: str
    grade: str
    grader: str
    notes: str = ""


def _finite(value: Any) -> bool:
    return value is not None and bool(np.isfinite(value))


def _utc(when: Any) -> Any:
    """A database time comparable with any other (SQLite gives them back without a zone)."""
    return when.replace(tzinfo=None) if getattr(when, "tzinfo", None) else when


def _number(value: Any) -> Any:
    """JSON-safe: NaN and inf become None, numpy scalars plain Python."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return value


class Inspector:
    """The candidates of one scan, their pixels, and the grades database."""

    def __init__(self, scan: str | Path, data: str | Path, cfg: InspectConfig) -> None:
        self.cfg = cfg
        table = read_candidates(scan).sort_by([("rank", "ascending")])
        self.rows: list[dict[str, Any]] = table.to_pylist()
        if not self.rows:
            raise DataError(f"{scan}: the candidate catalogue is empty")
        self.source = open_scanned_data(scan, data)
        ids = np.asarray([r["id"] for r in self.rows], dtype=np.int64)
        index = index_of_ids(np.asarray(self.source.ids, dtype=np.int64), ids)
        if (index < 0).all():
            raise DataError(f"{data}: none of the scan's candidate IDs are in this data")
        self.index = {int(i): int(p) for i, p in zip(ids, index, strict=True) if p >= 0}
        self.by_id = {int(r["id"]): r for r in self.rows}
        scan_dir = Path(scan) if Path(scan).is_dir() else Path(scan).parent
        self.book = GradeBook(cfg.db or scan_dir / DB_NAME)
        self._read_lock = threading.Lock()  # one reader of the data at a time
        self.render = lru_cache(maxsize=cfg.cache_images)(self._render)
        self.scores = {int(r["id"]): float(r["score"]) for r in self.rows if _finite(r["score"])}
        self.sentinels = SentinelSet(cfg.sentinels, self.source) if cfg.sentinels else None
        self.tokens = TokenBook()

    def assessment(self) -> Assessment:
        """Every grade weighed now: skills, priors from the scan's scores, posteriors."""
        return assess(self.book, self.scores, self.cfg.grading)

    def queue_order(self, weighed: Assessment, grader: str) -> list[int]:
        """Candidates this grader has not graded and that are not retired, most expected
        information (for this grader's skill) first, then by rank."""
        skill = weighed.skill(grader)
        gained = []
        for rank, row in enumerate(self.rows):
            candidate = int(row["id"])
            agreed = weighed.consensus.get(candidate)
            if candidate not in self.index or (agreed and grader in agreed.grades):
                continue
            if weighed.verdicts.get(candidate) is not None:
                continue
            bits = swap.expected_information(weighed.posteriors[candidate], skill)
            gained.append((-bits, rank, candidate))
        return [candidate for _, _, candidate in sorted(gained)]

    def next_item(self, grader: str) -> dict[str, Any]:
        """The grader's current queue item (held until graded, so a reload shows it again) and
        how many grades they have given. The same keys whatever the item is."""
        with self.tokens.lock:
            token = self.tokens.pending(grader)
            if token is None:
                weighed = self.assessment()
                unseen: list[int] = []
                if self.sentinels is not None:
                    seen = {r.sentinel_id for r in weighed.sentinel_rows if r.grader == grader}
                    unseen = [r for r, i in self.sentinels.ids.items() if i not in seen]
                rate = self.cfg.grading.sentinel_rate
                item = pick(rate, self.queue_order(weighed, grader), unseen, self.tokens.rng)
                token = None if item is None else self.tokens.token(grader, item)
                self.tokens.hold(grader, token)
        return {"token": token, "graded": len(self.grader_sequence(grader))}

    def grade_item(self, token: str, grader: str, grade: str, notes: str) -> dict[str, Any]:
        """Record a grade of a queue item (checked the same way whatever it is) and move on."""
        item = self.tokens.item(token)
        grader, grade, notes = check_grader(grader), check_grade(grade), check_notes(notes)
        if item.kind == "candidate":
            self.book.record(item.key, grader, grade, notes)
        else:
            assert self.sentinels is not None
            sentinels = self.sentinels
            self.book.record_sentinel(
                sentinels.ids[item.key], sentinels.is_lens[item.key], grader, grade
            )
        with self.tokens.lock:
            self.tokens.release(grader, token)
        return self.next_item(grader)

    def grader_sequence(self, grader: str) -> list[tuple[str, bool | None]]:
        """Every grade ``grader`` gave, oldest first: (grade, sentinel truth or None)."""
        rows: list[tuple[Any, str, bool | None]] = [
            (r.graded_at, r.grade, None) for r in self.book.history() if r.grader == grader
        ]
        rows += [
            (r.graded_at, r.grade, bool(r.is_lens))
            for r in self.book.sentinel_history()
            if r.grader == grader
        ]
        return [(grade, truth) for _, grade, truth in sorted(rows, key=lambda r: _utc(r[0]))]

    def my_skill(self, grader: str) -> dict[str, Any]:
        """What a grader is shown of themselves: grades given, and their skill as of the last
        whole block of ``skill_block`` grades, so a change never points at one item."""
        sequence = self.grader_sequence(grader)
        cfg = self.cfg.grading
        block = len(sequence) // cfg.skill_block * cfg.skill_block
        skill = swap.skill_from(
            ((g, truth) for g, truth in sequence[:block] if truth is not None),
            cfg.skill_prior_mean,
            cfg.skill_prior_strength,
            cfg.c_weight,
        )
        shown = {k: v for k, v in skill.as_dict().items() if not k.endswith("sentinels")}
        return {"grader": grader, "graded": len(sequence), "skill_as_of": block, "skill": shown}

    def team(self) -> dict[str, Any]:
        """For the lead: every grader's skill, grades, sentinels caught and missed, agreement
        with the consensus; the team's kappa; the graded candidates' posteriors."""
        weighed = self.assessment()
        graders = sorted(
            {g for c in weighed.consensus.values() for g in c.grades}
            | {r.grader for r in weighed.sentinel_rows}
        )
        return {
            "graders": [self._grader_row(weighed, g) for g in graders],
            "kappa": _number(weighed.kappa),
            "sentinels": len(self.sentinels) if self.sentinels else 0,
            "sentinel_rate": self.cfg.grading.sentinel_rate,
            "candidates": self._candidate_rows(weighed),
        }

    def _grader_row(self, weighed: Assessment, grader: str) -> dict[str, Any]:
        latest = {r.sentinel_id: r for r in weighed.sentinel_rows if r.grader == grader}
        lens = [r.grade for r in latest.values() if r.is_lens]
        duds = [r.grade for r in latest.values() if not r.is_lens]
        shared = [c for c in weighed.consensus.values() if grader in c.grades and c.n_graders > 1]
        agreeing = sum(c.grades[grader] == c.grade for c in shared)
        return {
            "grader": grader,
            "candidates": sum(grader in c.grades for c in weighed.consensus.values()),
            **{k: _number(v) for k, v in weighed.skill(grader).as_dict().items()},
            "lenses_caught": sum(g in swap.LENS_GRADES for g in lens),
            "lenses_missed": sum(g not in swap.LENS_GRADES for g in lens),
            "nonlenses_rejected": sum(g == "X" for g in duds),
            "false_alarms": sum(g in swap.LENS_GRADES for g in duds),
            "agrees_with_consensus": _number(agreeing / len(shared)) if shared else None,
        }

    def _candidate_rows(self, weighed: Assessment) -> list[dict[str, Any]]:
        rows = []
        for candidate, agreed in sorted(
            weighed.consensus.items(), key=lambda kv: -weighed.posteriors[kv[0]]
        ):
            row = self.by_id.get(candidate, {})
            rows.append(
                {
                    "id": candidate,
                    "rank": row.get("rank"),
                    "score": _number(row.get("score")),
                    "prior": weighed.priors[candidate],
                    "posterior": weighed.posteriors[candidate],
                    "mean_grade": agreed.mean_value,
                    "class": swap.grade_class(agreed.mean_value),
                    "graders": agreed.n_graders,
                    "agreement": _number(weighed.agreement[candidate]),
                    "retired": weighed.verdicts[candidate],
                }
            )
        return rows

    def catalogue(self, candidate: int) -> dict[str, Any]:
        """The data's catalogue quantities of one candidate (Einstein radius, magnitudes...)."""
        position = self.index.get(candidate)
        if position is None:
            return {}
        return {k: _number(v[position]) for k, v in self.source.catalog.items()}

    def listing(
        self, grader: str, score_min: float, score_max: float, show: str
    ) -> list[dict[str, Any]]:
        """Candidates in rank order within the score range; ``show``: all, ungraded (by this
        grader), or a consensus grade."""
        consensus = self.book.consensus()
        out = []
        for row in self.rows:
            if not score_min <= row["score"] <= score_max:
                continue
            agreed = consensus.get(int(row["id"]))
            mine = agreed.grades.get(grader) if agreed else None
            if show == "ungraded" and mine is not None:
                continue
            if show in GRADES and (agreed is None or agreed.grade != show):
                continue
            out.append(
                {
                    "rank": row["rank"],
                    "id": row["id"],
                    "score": _number(row["score"]),
                    "mine": mine,
                    "consensus": agreed.grade if agreed else None,
                }
            )
        return out

    def detail(self, candidate: int, grader: str) -> dict[str, Any]:
        row = self.by_id.get(candidate)
        if row is None:
            raise DataError(f"candidate {candidate} is not in this scan")
        agreed = self.book.consensus().get(candidate)
        current = self.book.current().get(candidate, {}).get(grader)
        scan = {k: _number(v) for k, v in row.items()}
        einstein = format_theta_e(row.get(THETA_E), row.get(THETA_E_SIGMA))
        if einstein:  # the model's estimate, when it has the Einstein-radius head
            scan["Einstein radius (model)"] = einstein
        return {
            "scan": scan,
            "catalogue": self.catalogue(candidate),
            "in_data": candidate in self.index,
            "mine": current.grade if current else None,
            "notes": current.notes if current else "",
            "consensus": agreed.grade if agreed else None,
            "grades": agreed.grades if agreed else {},
        }

    def _render(self, item: Item, band: str, stretch: str, zoom: bool, view: str) -> bytes:
        """A PNG of one band (or the colour ``view``) of one item, north up: a sentinel's
        exactly as a candidate's."""
        from PIL import Image

        source, name = self.source, f"candidate {item.key}"
        position: int | None = self.index.get(item.key)
        if item.kind == "sentinel" and self.sentinels is not None:
            source, position, name = self.sentinels.source, item.key, "this item"
        if position is None:
            raise DataError(f"{name}: ID not in the data")
        with self._read_lock:
            cutouts = source.read([position])
        if not cutouts.valid[0]:
            raise DataError(f"{name}: unreadable ({cutouts.reasons[0]})")
        softening = self.cfg.asinh_softening if stretch == "asinh" else self.cfg.linear_softening
        vis, nisp = cutouts.vis[0], cutouts.nisp[0]
        if band == "colour":
            image = draw_view(vis, nisp, view, self.cfg.colour, softening)
        else:
            pixels = vis if band == "VIS" else nisp[BANDS.index(band) - 2]
            image = np.round(asinh_stretch(pixels, softening) * 255).astype(np.uint8)
        image = np.flipud(image)  # row 0 of a FITS image is its bottom
        if zoom:
            side = image.shape[0]
            keep = max(4, round(side / self.cfg.zoom))
            start = (side - keep) // 2
            image = image[start : start + keep, start : start + keep]
        image = resize_square(np.ascontiguousarray(image), self.cfg.stamp_pixels)
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, format="PNG")
        return buffer.getvalue()


def check_bind(host: str, token: str | None) -> None:
    """Only localhost may serve without a token: grades are a team's work."""
    if host not in LOCAL_HOSTS and not token:
        raise ConfigError(f"--host {host} exposes the grading app beyond this machine; add --token")


def allowed_hosts(host: str) -> list[str]:
    """Host headers a localhost server answers: its own names only, so that a web page whose
    domain was rebound to 127.0.0.1 cannot talk to it. Other binds need the token instead."""
    if host not in LOCAL_HOSTS:
        return ["*"]
    names = ["localhost", "127.0.0.1", "[::1]"]
    bound = f"[{host}]" if ":" in host else host
    return names if bound in names else [*names, bound]


class BodyLimit:
    """HTTP 413 for a request body over ``limit`` bytes, declared or streamed, before the app
    holds it in memory."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app, self.limit = app, limit
        self.detail = f"request body over {limit} bytes (notes hold at most {MAX_NOTES} characters)"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = Headers(scope=scope).get("content-length")
        if declared is not None and (not declared.strip().isdigit() or int(declared) > self.limit):
            await JSONResponse({"detail": self.detail}, status_code=413)(scope, receive, send)
            return
        received, started, refused = 0, False, False

        async def counted() -> Message:
            """The body as it comes; past the limit, a 413 answers and the app is told the
            client left (whatever it answers to that is dropped)."""
            nonlocal received, refused
            if refused:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    refused = True
                    if not started:
                        await JSONResponse({"detail": self.detail}, status_code=413)(
                            scope, receive, send
                        )
                    return {"type": "http.disconnect"}
            return message

        async def unless_refused(message: Message) -> None:
            nonlocal started
            if not refused:
                started = started or message["type"] == "http.response.start"
                await send(message)

        await self.app(scope, counted, unless_refused)


class SecurityHeaders:
    """The Content-Security-Policy (and two more headers) on every response."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                kept = [(k, v) for k, v in message.get("headers", []) if k.lower() not in _OURS]
                message = {**message, "headers": kept + _SECURITY_HEADER_BYTES}
            await send(message)

        await self.app(scope, receive, with_headers)


def grading_page(cfg: InspectConfig) -> str:
    """The page with the grade definitions, the default grader, the first mode (the blind
    queue when there are sentinels) and colour view filled in; each goes in as an escaped
    attribute that the script reads as data."""
    definitions = "".join(
        f"<li><b>{html.escape(g)}</b> {html.escape(text)}</li>" for g, text in GRADES.items()
    )
    return (
        PAGE.read_text()
        .replace("{{DEFINITIONS}}", definitions)
        .replace("{{GRADER}}", html.escape(cfg.grader, quote=True))
        .replace("{{MODE}}", "queue" if cfg.sentinels else "browse")
        .replace("{{VIEW}}", html.escape(cfg.colour.view, quote=True))
        .replace("{{VIEWS}}", html.escape(" ".join(VIEWS), quote=True))
    )


def _add_token_check(app: FastAPI, token: str | None) -> None:
    """Every request carries ``token`` (header, ``?token=`` once, then the cookie), if set."""

    @app.middleware("http")
    async def require_token(request: Request, call_next: Any) -> Response:
        if token is None:
            return await call_next(request)
        given = (
            request.headers.get(TOKEN_HEADER)
            or request.query_params.get("token")
            or request.cookies.get(TOKEN_COOKIE)
            or ""
        )
        if not hmac.compare_digest(given.encode(), token.encode()):
            return JSONResponse({"detail": "a valid token is required"}, status_code=401)
        response = await call_next(request)
        if request.query_params.get("token"):
            response.set_cookie(TOKEN_COOKIE, token, httponly=True, samesite="strict")
        return response


def _add_guards(app: FastAPI, host: str) -> None:
    """Host check, body limit and security headers; a user error is an HTTP 400 with its line.

    Added after the token check, so outermost: a wrong Host or an oversized body is refused
    before anything else runs, and every response, refusals included, carries the security
    headers.
    """
    app.add_middleware(BodyLimit, limit=MAX_BODY_BYTES)
    app.add_middleware(TrustedHostMiddleware, allowed_hosts=allowed_hosts(host))
    app.add_middleware(SecurityHeaders)

    @app.exception_handler(LensfinderError)
    async def user_error(_request: Request, exc: LensfinderError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=400)


def _lead_check(lead_token: str | None) -> Any:
    """A dependency: the request carries the lead's token (header, ``?lead=`` once, then the
    cookie), else HTTP 403; without ``--lead-token`` nobody is the lead."""

    def check(request: Request) -> None:
        given = (
            request.headers.get(LEAD_HEADER)
            or request.query_params.get("lead")
            or request.cookies.get(LEAD_COOKIE)
            or ""
        )
        if lead_token is None or not hmac.compare_digest(given.encode(), lead_token.encode()):
            why = "the team lead's token is required" + (
                "" if lead_token else " (start the server with --lead-token)"
            )
            raise HTTPException(status_code=403, detail=why)

    return Depends(check)


def _add_page_routes(app: FastAPI, page: str, lead_token: str | None) -> None:
    """The pages and their scripts and style sheet, read once; the team page for the lead."""
    static = {name: (HERE / name).read_bytes() for name in STATIC}
    team_page = TEAM_PAGE.read_text()

    @app.get("/", response_class=HTMLResponse)
    def index() -> str:
        return page

    @app.get("/team", response_class=HTMLResponse, dependencies=[_lead_check(lead_token)])
    def team(request: Request) -> Response:
        response = HTMLResponse(team_page)
        if lead_token and request.query_params.get("lead"):
            response.set_cookie(LEAD_COOKIE, lead_token, httponly=True, samesite="strict")
        return response

    @app.get("/static/{name}")
    def static_file(name: str) -> Response:
        if name not in STATIC:
            return JSONResponse({"detail": "not found"}, status_code=404)
        return Response(static[name], media_type=STATIC[name])


def _add_queue_routes(app: FastAPI, inspector: Inspector, lead_token: str | None) -> None:
    """The blind queue (item tokens only), a grader's own record, and the lead's team view."""

    @app.get("/api/queue")
    def queue(grader: str) -> dict[str, Any]:
        return inspector.next_item(check_grader(grader))

    @app.post("/api/queue")
    def grade_item(body: QueueGradeIn) -> dict[str, Any]:
        return inspector.grade_item(body.token, body.grader, body.grade, body.notes)

    @app.get("/api/item/{token}/{band}.png")
    def item_image(
        token: str,
        band: Band,
        stretch: Stretch = "asinh",
        zoom: bool = False,
        view: View = "vis-nisp",
    ) -> Response:
        item = inspector.tokens.item(token[: MAX_TOKEN + 1])
        try:
            png = inspector.render(item, band, stretch, zoom, view)
        except DataError:
            raise DataError("this item's picture cannot be drawn") from None  # the same for all
        return _png_response(png)

    @app.get("/api/me")
    def me(grader: str) -> dict[str, Any]:
        return inspector.my_skill(check_grader(grader))

    @app.get("/api/team", dependencies=[_lead_check(lead_token)])
    def team() -> dict[str, Any]:
        return inspector.team()


def _png_response(png: bytes) -> Response:
    """A stamp, cached by the browser for an hour (it never changes for one URL)."""
    return Response(png, media_type="image/png", headers={"Cache-Control": "max-age=3600"})


def _add_api_routes(app: FastAPI, inspector: Inspector) -> None:
    """The JSON API: candidates, one candidate, its pictures, grading, the CSV export."""

    @app.get("/api/candidates")
    def candidates(
        grader: str,
        score_min: float = 0.0,
        score_max: float = 1.0,
        show: Literal["all", "ungraded", "A", "B", "C", "X"] = "all",
    ) -> dict[str, Any]:
        rows = inspector.listing(check_grader(grader), score_min, score_max, show)
        return {"candidates": rows, "total": len(inspector.rows)}

    @app.get("/api/candidates/{candidate}")
    def candidate(candidate: int, grader: str) -> dict[str, Any]:
        return inspector.detail(candidate, check_grader(grader))

    @app.get("/api/image/{candidate}/{band}.png")
    def image(
        candidate: int,
        band: Band,
        stretch: Stretch = "asinh",
        zoom: bool = False,
        view: View = "vis-nisp",
    ) -> Response:
        png = inspector.render(Item("candidate", candidate), band, stretch, zoom, view)
        return _png_response(png)

    @app.post("/api/grades")
    def grade(body: GradeIn) -> dict[str, Any]:
        if body.id not in inspector.by_id:
            raise DataError(f"candidate {body.id} is not in this scan")
        inspector.book.record(body.id, body.grader, body.grade, body.notes)
        return inspector.detail(body.id, check_grader(body.grader))

    @app.get("/api/export.csv")
    def export() -> Response:
        import pyarrow.csv as pacsv

        buffer = io.BytesIO()
        pacsv.write_csv(consensus_table(inspector.book, inspector.assessment()), buffer)
        return Response(
            buffer.getvalue(),
            media_type="text/csv",
            headers={"Content-Disposition": 'attachment; filename="grades.csv"'},
        )


def create_app(
    inspector: Inspector, token: str | None = None, lead_token: str | None = None
) -> FastAPI:
    """The FastAPI application over one ``Inspector``; ``lead_token`` opens the team page."""
    app = FastAPI(title="lensfinder inspect", docs_url=None, redoc_url=None, openapi_url=None)
    _add_token_check(app, token)
    _add_guards(app, inspector.cfg.host)
    _add_page_routes(app, grading_page(inspector.cfg), lead_token)
    _add_api_routes(app, inspector)
    _add_queue_routes(app, inspector, lead_token)
    return app


def listen(host: str, port: int) -> socket.socket:
    """The server's listening socket, bound before anything says where the app is: a busy port
    is one line, never a "grading at" line followed by uvicorn's failure."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # not a busy port: TIME_WAIT only
    try:
        sock.bind((host, port))
        sock.listen(128)
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise ConfigError(
                f"port {port} on {host} is in use (another server?); choose another with --port"
            ) from None
        raise ConfigError(f"cannot listen on {host}:{port} ({exc.strerror or exc})") from None
    return sock


@dataclass
class GradingServer:
    """An app over one scan, its listening socket bound, ready to serve."""

    inspector: Inspector
    app: FastAPI
    sock: socket.socket
    url: str  # with ``?token=`` when the server needs one

    def summary(self) -> str:
        """Where to grade and where the grades go (the caller shows it)."""
        where = f"{self.url} (grades: {self.inspector.book.shown_url})"
        sentinels = self.inspector.sentinels
        hidden = f" with {len(sentinels)} hidden sentinels" if sentinels else ""
        return f"grading {len(self.inspector.rows)} candidates{hidden} at {where}"

    def serve(self) -> None:
        """Run until interrupted (uvicorn, one process: the database takes the concurrency)."""
        import uvicorn

        config = uvicorn.Config(self.app, log_level="warning")
        uvicorn.Server(config).run(sockets=[self.sock])


def open_server(
    scan: str | Path,
    data: str | Path,
    cfg: InspectConfig,
    token: str | None = None,
    lead_token: str | None = None,
) -> GradingServer:
    """Check the bind, read the scan and bind the port: every refusal comes before the caller
    says where the app is, so a busy port is one line, never a "grading at" line and a failure."""
    check_bind(cfg.host, token)
    inspector = Inspector(scan, data, cfg)
    sock = listen(cfg.host, cfg.port)
    shown_host = f"[{cfg.host}]" if ":" in cfg.host else cfg.host
    url = f"http://{shown_host}:{cfg.port}/" + (f"?token={token}" if token else "")
    return GradingServer(inspector, create_app(inspector, token, lead_token), sock, url)
