"""Livepeer stream sessions in the pure core: decoding, the rules of CONTRACT 4.3, the seed-000 object."""

from __future__ import annotations

import random
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from service.core.streams import ReferenceStream, StreamEnd, stream_session_object, stream_summary
from service.errors import InvalidMessage
from service.livepeer import decode_livepeer_webhook, decode_snapshot
from tests.streams import SEED_000, T0, snapshot, snapshot_series, webhook


def snap(obj: dict[str, Any]) -> Any:
    return decode_snapshot(orjson.dumps(obj))


def stream(*commands: Any) -> ReferenceStream:
    s = ReferenceStream(commands[0].session_id)
    for c in commands:
        s.apply(c)
    return s


def test_the_seed_example_comes_out_as_it_went_in() -> None:
    assert stream_session_object(stream(snap(SEED_000)).view()) == SEED_000


def test_deprecated_fields_are_left_out() -> None:
    view = stream(snap({**SEED_000, "kind": "stream", "userId": "u-1"})).view()
    assert stream_session_object(view) == SEED_000


def test_a_stale_snapshot_changes_nothing() -> None:
    new = snap(snapshot("s", "p", T0 + 20_000, T0, 2000, 4000))
    old = snap(snapshot("s", "p", T0 + 10_000, T0, 1000, 2000, isHealthy=False))
    s = stream(new)
    before = stream_session_object(s.view())
    assert s.apply(old) == "applied"  # it is the one before the newest: it gives the rates
    after = stream_session_object(s.view())
    assert after["sourceBytes"] == 2000 and after["isHealthy"] is True
    assert {k: v for k, v in after.items() if "Rate" not in k} == {
        k: v for k, v in before.items() if "Rate" not in k
    }
    older = snap(snapshot("s", "p", T0 + 5_000, T0, 500, 1000))
    assert s.apply(older) == "duplicate"  # older than both kept: superseded
    assert s.apply(new) == "duplicate"


def test_rates_come_from_the_snapshot_when_given_and_non_zero() -> None:
    a = snap(snapshot("s", "p", T0 + 10_000, T0, 1000, 2000, rates=True))
    b = snap(snapshot("s", "p", T0 + 20_000, T0, 5000, 6000, rates=True))
    obj = stream_session_object(stream(a, b).view())
    assert (obj["ingestRate"], obj["outgoingRate"]) == (3000, 6000)


def test_rates_are_derived_from_the_two_newest_snapshots_otherwise() -> None:
    a = snap(snapshot("s", "p", T0 + 10_000, T0, 1000, 2000))
    b = snap(snapshot("s", "p", T0 + 14_000, T0, 9000, 4000))
    c = snap(snapshot("s", "p", T0 + 1_000, T0, 10, 20))
    obj = stream_session_object(stream(c, b, a).view())
    assert obj["ingestRate"] == (9000 - 1000) / 4 and obj["outgoingRate"] == (4000 - 2000) / 4


def test_a_single_snapshot_without_rates_keeps_its_zero() -> None:
    obj = stream_session_object(stream(snap(snapshot("s", "p", T0 + 1, T0, 10, 20))).view())
    assert (obj["ingestRate"], obj["outgoingRate"]) == (0, 0)


def test_recording_fields_come_from_the_newest_snapshot_or_webhook() -> None:
    s = stream(snap(snapshot("s", "p", T0 + 10_000, T0, 1, 2, recordingStatus="waiting")))
    ready = webhook(
        "recording.ready",
        t_ms=T0 + 60_000,
        stream_id="p",
        session_id="s",
        recordingUrl="https://x/index.m3u8",
        mp4Url="https://x/720.mp4",
    )
    s.apply(decode_livepeer_webhook(orjson.dumps(ready)))
    later = snap(snapshot("s", "p", T0 + 20_000, T0, 3, 4, recordingStatus="waiting"))
    s.apply(later)  # older than the webhook: its recordingStatus does not win
    obj = stream_session_object(s.view())
    assert (obj["recordingStatus"], obj["recordingUrl"], obj["mp4Url"]) == (
        "ready",
        "https://x/index.m3u8",
        "https://x/720.mp4",
    )


def test_stream_idle_ends_the_sessions_created_by_then_at_their_last_seen() -> None:
    s = stream(snap(snapshot("s", "p", T0 + 10_000, T0, 1, 2)))
    s.apply(StreamEnd("s", T0 - 1, ""))  # an earlier session of the stream went idle
    assert s.view().status == "LIVE"
    s.apply(StreamEnd("s", T0 + 15_000, ""))
    view = s.view()
    assert (view.status, view.ended_ms, view.end_reason) == ("ENDED", T0 + 10_000, "ended")
    summary = stream_summary(view)
    assert summary["ended_at"] == "2026-01-01T00:00:10.000Z" and summary["duration_seconds"] == 10


def test_stream_idle_before_the_first_snapshot_still_ends_it() -> None:
    s = ReferenceStream("s")
    s.apply(StreamEnd("s", T0 + 15_000, ""))
    s.apply(snap(snapshot("s", "p", T0 + 10_000, T0, 1, 2)))
    assert s.view().status == "ENDED"


def test_an_explicit_end_wins_over_the_idle_rule() -> None:
    s = stream(snap(snapshot("s", "p", T0 + 10_000, T0, 1, 2)))
    assert s.end_idle(now_ms=T0 + 10**9, idle_timeout_ms=600_000)
    assert s.view().end_reason == "idle_timeout"
    s.apply(StreamEnd("s", T0 + 15_000, ""))
    assert s.view().end_reason == "ended"
    assert not s.end_idle(now_ms=T0 + 10**9, idle_timeout_ms=600_000)


def test_the_summary_has_the_livepeer_fields() -> None:
    s = stream(
        snap(snapshot("s", "p", T0 + 10_000, T0, 1000, 2000)),
        snap(snapshot("s", "p", T0 + 20_000, T0, 3000, 6000, isHealthy=False, issues=["Buffer underflow"])),
    )
    s.apply(StreamEnd("s", T0 + 30_000, ""))
    summary = stream_summary(s.view())
    assert summary == {
        "session_id": "s",
        "source": "livepeer",
        "type": "stream",
        "associated_id": "p",
        "title": "stream s",
        "organization_id": "proj-a",
        "started_at": "2026-01-01T00:00:00.000Z",
        "ended_at": "2026-01-01T00:00:20.000Z",
        "duration_seconds": 20.0,
        "end_reason": "ended",
        "source_bytes": 3000,
        "transcoded_bytes": 6000,
        "source_segments": 3,
        "transcoded_segments": 6,
        "source_segments_duration": 20.0,
        "transcoded_segments_duration": 20.0,
        "avg_ingest_rate": 150.0,
        "avg_outgoing_rate": 300.0,
        "is_healthy": False,
        "issues": ["Buffer underflow"],
        "recording_status": None,
        "recording_url": None,
        "mp4_url": None,
    }


@pytest.mark.parametrize(
    ("obj", "error_type"),
    [
        ({k: v for k, v in SEED_000.items() if k != "lastSeen"}, "missing_field"),
        ({**SEED_000, "lastSeen": "yesterday"}, "invalid_field"),
        ({**SEED_000, "lastSeen": -5}, "invalid_timestamp"),
        ({**SEED_000, "sourceBytes": "many"}, "invalid_field"),
        ({**SEED_000, "id": ""}, "invalid_field"),
        ({**SEED_000, "issues": "all of them"}, "invalid_field"),
    ],
)
def test_bad_snapshots_say_why(obj: dict, error_type: str) -> None:
    with pytest.raises(InvalidMessage) as info:
        snap(obj)
    assert info.value.error_type == error_type


def test_webhooks_without_session_state_are_acknowledged_not_refused() -> None:
    for event in ("stream.started", "multistream.connected", "asset.ready", "task.spawned"):
        body = webhook(event, t_ms=T0, stream_id="p")
        assert decode_livepeer_webhook(orjson.dumps(body)) is None


def test_stream_idle_names_the_parent_stream() -> None:
    idle = decode_livepeer_webhook(orjson.dumps(webhook("stream.idle", t_ms=T0, stream_id="p")))
    assert idle is not None and (idle.parent_id, idle.t_ms) == ("p", T0)  # type: ignore[union-attr]
    with pytest.raises(InvalidMessage):
        decode_livepeer_webhook(orjson.dumps({"id": "x", "event": "stream.idle", "stream": {}}))


def idle_for(sid: str, t: int) -> StreamEnd:
    return StreamEnd(sid, t, "")


@settings(max_examples=200, deadline=None)
@given(seed=st.integers(0, 2**32), idle=st.booleans())
def test_any_order_with_duplicates_gives_the_same_view(seed: int, idle: bool) -> None:
    rng = random.Random(seed)
    sid, parent, snaps = snapshot_series(rng)
    commands: list[Any] = [snap(s) for s in snaps]
    last = snaps[-1]["lastSeen"]
    commands.append(
        decode_livepeer_webhook(
            orjson.dumps(
                webhook(
                    "recording.ready",
                    t_ms=last + 5000,
                    stream_id=parent,
                    session_id=sid,
                    mp4Url="https://x/a.mp4",
                )
            ),
        )
    )
    if idle:
        commands.append(idle_for(sid, last + 1000))
    want = stream(*commands).view()
    delivered = commands + rng.sample(commands, k=len(commands) // 2)
    rng.shuffle(delivered)
    got = stream(*delivered).view()
    assert stream_session_object(got) == stream_session_object(want)
    assert stream_summary(got) == stream_summary(want)
    assert got.status == ("ENDED" if idle else "LIVE")
