"""`python -m service api`: the read API over Redis state (CONTRACT 7), webhook intake, health."""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import uuid
from collections.abc import AsyncIterator
from typing import Annotated, Any, Literal

import orjson
from fastapi import Depends, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException

from . import constants as C
from . import metrics
from .asyncapi import document as asyncapi_document
from .core import shapes
from .core.model import PeerView, SessionView
from .core.streams import StreamView, stream_session_object, stream_summary
from .core.timeutil import iso_ms, now_ms, parse_iso_ms
from .intake import install_intake
from .outbox import content_hash
from .runtime import Runtime, build_runtime, configure_logging, runtime_or_exit
from .store import view_from_raw, zset_members
from .stream_store import StreamStore

log = logging.getLogger("service.api")

PageNo = Annotated[int, Query(ge=1, description="page number, from 1")]
PerPage = Annotated[int, Query(ge=1, le=100, description="items per page, at most 100")]


class JSON(Response):
    """JSON bodies encoded with orjson."""

    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


MAX_HEADER_BYTES = 64 * 1024


class HeaderLimit:
    """Refuses requests whose header block is larger than MAX_HEADER_BYTES with 431."""

    def __init__(self, app: Any, limit: int = MAX_HEADER_BYTES) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and sum(len(k) + len(v) for k, v in scope["headers"]) > self.limit:
            body = orjson.dumps(
                {
                    "success": False,
                    "error": {
                        "code": "headers_too_large",
                        "message": f"request headers are over {self.limit} bytes",
                    },
                }
            )
            headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
            await send({"type": "http.response.start", "status": 431, "headers": headers})
            await send({"type": "http.response.body", "body": body})
            return
        await self.app(scope, receive, send)


class CountRequests:
    """Counts answered requests by route template and status.

    A plain ASGI middleware: FastAPI's `@app.middleware("http")` runs every request through an
    extra task and a pair of memory streams. Without it, and with `Auth.organization` async,
    the API's CPU per participant read fell by about a third (`python -m bench.api_cost`).
    """

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 0

        async def send_counted(message: Any) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_counted)
        except Exception:
            status = status or 500  # answered by Starlette's error middleware, outside this one
            raise
        finally:
            # The route's template, not the path: ids would make a label per session. The
            # router sets it in this same scope.
            route = scope.get("route")
            metrics.HTTP_REQUESTS.labels(getattr(route, "path", "unmatched"), str(status)).inc()


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        self.status, self.code, self.message = status, code, message


def _ok(data: Any, paging: dict[str, int] | None = None) -> JSON:
    body: dict[str, Any] = {"success": True, "data": data}
    if paging is not None:
        body["paging"] = paging
    return JSON(body)


def _paging(total: int, page_no: int, per_page: int, count: int) -> dict[str, int]:
    start = (page_no - 1) * per_page
    return {
        "total_count": total,
        "start_offset": start + 1 if count else 0,
        "end_offset": start + count if count else 0,
    }


def _not_found(what: str) -> ApiError:
    return ApiError(404, "not_found", f"{what} not found")


def _iso_param(name: str, value: str | None) -> int | None:
    if value is None:
        return None
    try:
        return parse_iso_ms(value)
    except ValueError as exc:
        raise ApiError(400, "invalid_request", f"{name} must be an ISO-8601 timestamp") from exc


class Auth:
    """Bearer keys of API_KEYS, each bound to one organization or `*` (CONTRACT 7)."""

    def __init__(self, scopes: dict[str, str] | None) -> None:
        self.keys = [(k.encode(), org) for k, org in (scopes or {}).items()]
        self.open = scopes is None

    async def organization(self, request: Request) -> str:
        """The caller's organization (`*` for all); 401 without a known key.

        `async`, though it never awaits: FastAPI runs a plain `def` dependency in a thread
        pool, a hand-over to another thread and back on every request."""
        if self.open:
            return "*"
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise ApiError(401, "unauthorized", "send Authorization: Bearer <API key>")
        given = token.strip().encode()
        found: str | None = None
        for key, org in self.keys:
            # Every key is compared, each in constant time, so timing tells nothing about which matched.
            if hmac.compare_digest(key, given):
                found = org
        if found is None:
            raise ApiError(401, "unauthorized", "unknown API key")
        return found


class Readiness:
    """Kafka reachability, checked in the background so a probe never waits on a dead broker."""

    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        self.kafka_ok = False
        self.kafka_error = "not checked yet"

    async def run(self) -> None:
        backoff = 1.0
        while True:
            try:
                if not self.kafka_ok:
                    await self.rt.connect_broker()
                self.kafka_ok = await self.rt.broker.ping(timeout=5.0)
                self.kafka_error = "" if self.kafka_ok else "broker did not answer"
                backoff = 5.0
            except Exception as exc:
                if self.kafka_ok or self.kafka_error != str(exc):
                    log.warning("Kafka at %s unreachable: %s", self.rt.settings.kafka_bootstrap_servers, exc)
                self.kafka_ok, self.kafka_error = False, str(exc) or type(exc).__name__
                backoff = min(backoff * 2, 30.0)
            await asyncio.sleep(backoff)


def create_app(rt: Runtime | None = None) -> FastAPI:
    rt = rt or build_runtime()
    readiness = Readiness(rt)
    auth = Auth(rt.settings.api_key_scopes)

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        task = asyncio.create_task(readiness.run())
        log.info("api serving on http://%s:%d", rt.settings.http_host, rt.settings.http_port)
        if rt.settings.api_keys is None:
            log.warning(
                "API_KEYS is not set: the read API is open to anyone who can reach it (development only)"
            )
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            with contextlib.suppress(Exception):
                await rt.broker.stop()
            await rt.redis.aclose()

    app = FastAPI(
        title="sessionpulse",
        version="0.1.0",
        description="Live session state from Kafka: sessions, participants, summaries.",
        lifespan=lifespan,
        default_response_class=JSON,
    )
    store = rt.store

    @app.exception_handler(ApiError)
    async def _api_error(_: Request, exc: ApiError) -> Response:
        return JSON(
            {"success": False, "error": {"code": exc.code, "message": exc.message}}, status_code=exc.status
        )

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> Response:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ()) if p not in ("query", "path"))
        return JSON(
            {
                "success": False,
                "error": {"code": "invalid_request", "message": f"{where}: {first.get('msg')}"},
            },
            status_code=400,
        )

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> Response:
        return JSON(
            {"success": False, "error": {"code": "http_error", "message": str(exc.detail)}},
            status_code=exc.status_code,
        )

    install_intake(app, rt)
    app.add_middleware(HeaderLimit)
    app.add_middleware(CountRequests)

    spec: list[dict[str, Any]] = []  # built on first request, then kept

    @app.get("/asyncapi.json", tags=["health"], include_in_schema=False)
    async def asyncapi() -> JSON:
        """The worker's AsyncAPI document (topics and messages), as docs/asyncapi.json."""
        if not spec:
            spec.append(asyncapi_document(rt.settings))
        return JSON(spec[0])

    @app.get("/metrics", tags=["health"], include_in_schema=False)
    async def prometheus() -> Response:
        return Response(generate_latest(metrics.REGISTRY), media_type=CONTENT_TYPE_LATEST)

    # The caller's organization: a dependency of every /v1 route (`*` when API_KEYS is unset).
    org_dep = Depends(auth.organization)

    async def load(
        session_id: str, org: str, *, events: bool = True, peer: str | None = None
    ) -> tuple[SessionView, dict[bytes, bytes], dict[str, dict[int, str]]]:
        got = await store.read_view(session_id, events=events, peer=peer)
        # Another organization's session answers exactly like a missing one: ids do not leak.
        if got is None or (org != "*" and got[0].meta.get("organization_id") != org):
            raise _not_found("session")
        return got

    @app.get("/healthz", tags=["health"])
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", tags=["health"])
    async def readyz() -> Response:
        checks: dict[str, str] = {}
        try:
            await asyncio.wait_for(rt.redis.ping(), timeout=2.0)
            checks["redis"] = "ok"
        except Exception as exc:
            checks["redis"] = f"unreachable: {exc}"
        checks["kafka"] = "ok" if readiness.kafka_ok else f"unreachable: {readiness.kafka_error}"
        ready = all(v == "ok" for v in checks.values())
        return JSON({"ready": ready, "checks": checks}, status_code=200 if ready else 503)

    @app.get("/v1/sessions", tags=["sessions"])
    async def list_sessions(
        status: Literal["LIVE", "ENDED"] | None = None,
        type: Literal["meeting", "livestream", "participant"] | None = None,
        associated_id: str | None = None,
        organization_id: str | None = None,
        start_time: str | None = Query(None, description="ISO-8601; sessions started at or after"),
        end_time: str | None = Query(None, description="ISO-8601; sessions started at or before"),
        page_no: PageNo = 1,
        per_page: PerPage = 20,
        org: str = org_dep,
    ) -> JSON:
        if org != "*":
            if organization_id not in (None, org):
                return _ok({"sessions": []}, _paging(0, page_no, per_page, 0))
            organization_id = org
        lo, hi = _iso_param("start_time", start_time), _iso_param("end_time", end_time)
        wanted = {
            b"status": status,
            b"type": type,
            b"associated_id": associated_id,
            b"organization_id": organization_id,
        }
        filters = {k: v.encode() for k, v in wanted.items() if v is not None}
        ids = await _matching_ids(rt, lo, hi, filters)
        start = (page_no - 1) * per_page
        page = ids[start : start + per_page]
        raws = await asyncio.gather(*(store.read_raw(sid, events=False) for sid in page))
        now = now_ms()
        sessions = [
            shapes.session_object(view_from_raw(sid, raw), now)
            for sid, raw in zip(page, raws, strict=True)
            if raw is not None
        ]
        return _ok({"sessions": sessions}, _paging(len(ids), page_no, per_page, len(sessions)))

    # Declared before the /v1/sessions/{session_id}/... routes, which its path would also match.
    @app.get("/v1/sessions/peer-report/{peer_id}", tags=["participants"])
    async def peer_report(peer_id: str, org: str = org_dep) -> JSON:
        found = await store.read_report(peer_id)
        if found is None:
            raise _not_found("peer report")
        session_id, report = found
        try:
            view, _, events = await load(session_id, org)
        except ApiError:
            raise _not_found("peer report") from None
        peer = view.peers.get(peer_id)
        obj: dict[str, Any] = (
            shapes.participant_object(peer, now_ms()) if peer is not None else {"id": peer_id}
        )
        obj["peer_events"] = _peer_events(peer, events) if peer is not None else []
        obj["session_id"] = session_id
        obj["peer_report"] = orjson.loads(report)
        return _ok({"participant": obj})

    @app.get("/v1/sessions/{session_id}", tags=["sessions"])
    async def get_session(session_id: str, org: str = org_dep) -> JSON:
        view, _, _ = await load(session_id, org)
        return _ok(shapes.session_object(view, now_ms()))

    @app.get("/v1/sessions/{session_id}/participants", tags=["participants"])
    async def list_participants(
        session_id: str,
        org: str = org_dep,
        include_peer_events: bool = False,
        page_no: PageNo = 1,
        per_page: PerPage = 20,
    ) -> JSON:
        view, _, events = await load(session_id, org)
        ordered = shapes.participants_in_order(view)
        start = (page_no - 1) * per_page
        page = ordered[start : start + per_page]
        now = now_ms()
        out = [shapes.participant_object(p, now) for p in page]
        if include_peer_events:
            for obj, peer in zip(out, page, strict=True):
                obj["peer_events"] = _peer_events(peer, events)
        return _ok({"participants": out}, _paging(len(ordered), page_no, per_page, len(out)))

    @app.get("/v1/sessions/{session_id}/participants/{participant_id}", tags=["participants"])
    async def get_participant(
        session_id: str, participant_id: str, org: str = org_dep, include_peer_events: bool = False
    ) -> JSON:
        view, _, events = await load(session_id, org, peer=participant_id)
        peer = view.peers.get(participant_id)
        if peer is None:
            raise _not_found("participant")
        obj = shapes.participant_object(peer, now_ms())
        if include_peer_events:
            obj["peer_events"] = _peer_events(peer, events)
        return _ok({"participant": obj})

    def artifact(view: SessionView, slot: str, what: str) -> dict[str, Any]:
        found: dict[str, Any] | None = view.artifacts.get(slot)
        if not found:
            raise ApiError(404, "not_found", f"no {what} is known for this session yet")
        return found

    @app.get("/v1/sessions/{session_id}/chat", tags=["artifacts"])
    async def chat(session_id: str, org: str = org_dep) -> JSON:
        view, _, _ = await load(session_id, org, events=False)
        link = artifact(view, "chat", "chat download link")
        return _ok({"chat_download_url": link["url"], "chat_download_url_expiry": link["expiry"]})

    @app.get("/v1/sessions/{session_id}/transcript", tags=["artifacts"])
    async def transcript(session_id: str, org: str = org_dep) -> JSON:
        view, _, _ = await load(session_id, org, events=False)
        link = artifact(view, "transcript", "transcript")
        return _ok(
            {
                "sessionId": session_id,
                "transcript_download_url": link["url"],
                "transcript_download_url_expiry": link["expiry"],
            }
        )

    @app.get("/v1/sessions/{session_id}/summary", tags=["artifacts"])
    async def get_summary(session_id: str, org: str = org_dep) -> JSON:
        view, _, _ = await load(session_id, org, events=False)
        link = artifact(view, "summary", "transcript summary")
        return _ok(
            {
                "sessionId": session_id,
                "summaryDownloadUrl": link["url"],
                "summaryDownloadUrlExpiry": link["expiry"],
            }
        )

    @app.post("/v1/sessions/{session_id}/summary", tags=["artifacts"], status_code=202)
    async def request_summary(session_id: str, org: str = org_dep) -> JSON:
        view, _, _ = await load(session_id, org, events=False)
        request_id = str(uuid.uuid4())
        request = {
            "request_id": request_id,
            "session_id": session_id,
            "meeting_id": view.meta.get("associated_id"),
            "organization_id": view.meta.get("organization_id"),
            "requested_at": iso_ms(now_ms()),
        }

        try:
            await rt.publish(
                orjson.dumps(request),
                topic=rt.topics.summary_requests,
                key=session_id.encode(),
                headers={"request_id": request_id},
                timeout_s=10.0,
            )
        except Exception as exc:
            log.warning("summary request for a session not queued: %s", type(exc).__name__)
            raise ApiError(503, "unavailable", "the request could not be queued; retry later") from exc
        return JSON(
            {"success": True, "data": {"session_id": session_id, "status": "queued"}}, status_code=202
        )

    streams = StreamStore(store)

    def visible(view: StreamView, org: str) -> bool:
        # Livepeer's organization is the session's project (CONTRACT 6, 7).
        return org == "*" or view.project_id == org

    @app.get("/v1/streams/sessions/{session_id}", tags=["streams"])
    async def get_stream_session(session_id: str, org: str = org_dep) -> JSON:
        """The Livepeer Session object of seed 000, as Livepeer answers it (no envelope)."""
        got = await streams.read(session_id)
        if got is None or not visible(got[0], org):
            raise _not_found("stream session")
        return JSON(stream_session_object(got[0]))

    @app.get("/v1/streams/{parent_id}/sessions", tags=["streams"])
    async def list_stream_sessions(
        parent_id: str, org: str = org_dep, page_no: PageNo = 1, per_page: PerPage = 20
    ) -> JSON:
        found = [g for g in await streams.sessions_of(parent_id) if visible(g[0], org)]
        start = (page_no - 1) * per_page
        page = [stream_session_object(view) for view, _ in found[start : start + per_page]]
        return _ok({"sessions": page}, _paging(len(found), page_no, per_page, len(page)))

    @app.get("/v1/sessions/{session_id}/report", tags=["sessions"])
    async def report(session_id: str, org: str = org_dep) -> JSON:
        """The SessionSummary of a RealtimeKit or a Livepeer session (LIVE: as if it ended now)."""
        content: dict[str, Any]
        got = await store.read_view(session_id)
        if got is not None and (org == "*" or got[0].meta.get("organization_id") == org):
            view, raw, _ = got
            content, ended = shapes.session_summary(view, now_ms()), view.status == "ENDED"
        else:
            stream = await streams.read(session_id)
            if stream is None or not visible(stream[0], org):
                raise _not_found("session")
            content, raw = stream_summary(stream[0]), stream[1]
            ended = stream[0].status == "ENDED"
        revision: int | None = None
        if ended:
            # The revision this content is (or will be, once the outbox publishes it).
            stored_rev = int(raw.get(b"summary_rev", b"0"))
            same = raw.get(b"summary_hash", b"").decode() == content_hash(content)
            revision = stored_rev if same and stored_rev else stored_rev + 1
        return _ok({"message_id": shapes.summary_message_id(session_id), "revision": revision, **content})

    return app


def _peer_events(peer: PeerView, events: dict[str, dict[int, str]]) -> list[Any]:
    """The peer's applied events as received, in time order (seed 003 PeerEvent)."""
    stored = events.get(peer.peer_id, {})
    return [orjson.loads(stored[e]) for e in peer.events if e in stored]


async def _matching_ids(
    rt: Runtime, lo: int | None, hi: int | None, filters: dict[bytes, bytes]
) -> list[str]:
    """Session ids newest `started_at` first, within the time range and matching every filter.

    Scans the time range of the index; fine for the sizes a retention window holds, and
    the place to add per-field indexes when one organisation's history grows large.
    """
    redis = rt.redis
    hi_s = "+inf" if hi is None else str(hi)
    lo_s = "-inf" if lo is None else str(lo)
    ids: list[str] = []
    dangling: list[bytes] = []
    offset, chunk = 0, 500
    fields = list(filters)
    while True:
        members = zset_members(
            await redis.zrevrangebyscore(C.IDX_SESSIONS, hi_s, lo_s, start=offset, num=chunk)
        )
        if not members:
            break
        offset += len(members)
        pipe = redis.pipeline(transaction=False)
        for m in members:
            pipe.hmget(C.session_keys(m.decode())[0], [b"status", *fields])
        rows = await pipe.execute()
        for m, row in zip(members, rows, strict=True):
            if row[0] is None:
                dangling.append(m)  # the session expired after its retention
                continue
            if all(row[i + 1] == filters[f] for i, f in enumerate(fields)):
                ids.append(m.decode())
    if dangling:
        await redis.zrem(C.IDX_SESSIONS, *dangling)
    return ids


def main() -> int:
    import uvicorn

    rt = runtime_or_exit("api")
    configure_logging(rt.settings.log_level, rt.settings.log_format)
    uvicorn.run(
        create_app(rt),
        host=rt.settings.http_host,
        port=rt.settings.http_port,
        log_level=rt.settings.log_level.lower(),
        access_log=False,
        # uvicorn's own logging config would give its loggers their own text handlers; without
        # it they reach the root handler `configure_logging` set up (LOG_FORMAT=json included).
        log_config=None,
    )
    return 0
