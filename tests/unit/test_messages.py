"""What the outbox builds has the shapes of service/messages.py, the AsyncAPI document's schemas.

The integration tests validate every summary and TranscriptReady the worker publishes; these
cover the fields that only some sessions have (every artifact, a Livepeer stream's counters).
"""

from __future__ import annotations

import random
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from service.core import shapes
from service.core.model import Artifact
from service.core.streams import ReferenceStream, StreamEnd, stream_summary
from service.livepeer import decode_snapshot
from service.messages import SessionSummary, TranscriptReady
from tests.meetings import random_meeting
from tests.streams import T0, snapshot
from tests.unit.test_webhooks import by_topics, by_webhooks, told


def _message(kind: str, sid: str, content: dict[str, Any]) -> dict[str, Any]:
    """As the outbox publishes it: through JSON, with its id and a revision."""
    body = {"message_id": f"{sid}:{kind}", "revision": 1, **content}
    parsed: dict[str, Any] = orjson.loads(orjson.dumps(body))
    return parsed


def _artifacts(sid: str) -> list[Artifact]:
    def art(slot: str, value: dict[str, Any]) -> Artifact:
        return Artifact(sid, slot, "000000000000001|x", orjson.dumps(value).decode())

    return [
        art("transcript", {"url": "https://t.example/t.csv", "expiry": "2026-01-02T00:00:00.000Z"}),
        art("summary", {"url": "https://t.example/s.txt", "expiry": "2026-01-02T00:00:00.000Z"}),
        art("chat", {"url": "https://t.example/c.csv", "expiry": None}),
        art("recording:r1", {"id": "r1", "status": "UPLOADED", "started_at": "2026-01-01T00:00:00.000Z",
                             "url": "https://t.example/r1.mp4"}),
        art("livestream:l1", {"id": "l1", "status": "OFFLINE"}),
    ]  # fmt: skip


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**32), webhooks=st.booleans(), artifacts=st.booleans())
def test_meeting_summaries_and_transcripts_have_their_documented_shape(
    seed: int, webhooks: bool, artifacts: bool
) -> None:
    rng = random.Random(seed)
    m = random_meeting(rng, ended=True)
    s = told(m, by_webhooks(m, rng) if webhooks else by_topics(m, rng))
    for a in _artifacts(m.session_id) if artifacts else []:
        s.apply(a)
    view = s.view()
    summary = _message("summary", m.session_id, shapes.session_summary(view, view.ended_ms or 0))
    assert SessionSummary.model_validate(summary).root.source == "realtimekit"
    if artifacts:
        assert {"transcript_download_url", "recording_download_url", "livestreaming_status"} <= set(summary)
        transcript = shapes.transcript_ready(view)
        assert transcript is not None
        TranscriptReady.model_validate(_message("transcript-ready", m.session_id, transcript))


def test_a_stream_summary_has_its_documented_shape() -> None:
    s = ReferenceStream("s")
    s.apply(decode_snapshot(orjson.dumps(snapshot("s", "p", T0 + 10_000, T0, 1000, 2000))))
    s.apply(
        decode_snapshot(
            orjson.dumps(
                snapshot("s", "p", T0 + 20_000, T0, 3000, 6000, isHealthy=False, issues=["Buffer underflow"])
            )
        )
    )
    s.apply(StreamEnd("s", T0 + 30_000, ""))
    summary = _message("summary", "s", stream_summary(s.view()))
    assert SessionSummary.model_validate(summary).root.source == "livepeer"


def test_a_field_the_schemas_do_not_know_is_refused() -> None:
    """So a field added to the messages but not to service/messages.py fails the tests above
    (and the integration tests) instead of leaving the AsyncAPI document behind."""
    rng = random.Random(1)
    m = random_meeting(rng, ended=True)
    view = told(m, by_topics(m)).view()
    summary = _message("summary", m.session_id, shapes.session_summary(view, view.ended_ms or 0))
    SessionSummary.model_validate(summary)
    with pytest.raises(ValidationError):
        SessionSummary.model_validate({**summary, "new_field": 1})
    with pytest.raises(ValidationError):
        SessionSummary.model_validate({**summary, "participants": [{**summary["participants"][0], "x": 1}]})
