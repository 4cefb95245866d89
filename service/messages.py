"""The outbound messages (CONTRACT 6) as models: their schemas in the AsyncAPI document.

The worker builds these messages as plain dicts (`core.shapes`, `core.streams`) and writes
them with orjson; the models describe them and check them in the tests, which validate
every published message against them. `extra="forbid"`: a field the code adds without
adding it here fails those tests, so the document cannot fall behind the messages.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, RootModel, WithJsonSchema

_OUT = ConfigDict(extra="forbid", strict=True)
IsoTime = Annotated[str, Field(description="ISO-8601 UTC with milliseconds and `Z`", pattern=r"Z$")]
Number = int | float


def _not_null(value: str | None) -> str | None:
    if value is None:
        raise ValueError("absent when not known, never null")
    return value


# A string present only when known (a webhook gave it): absent otherwise, never null.
OnlyWhenKnown = Annotated[
    str | None,
    AfterValidator(_not_null),
    WithJsonSchema({"type": "string", "description": "only when known"}),
]


class _Outbound(BaseModel):
    model_config = _OUT

    message_id: str = Field(
        description="`<session id>:summary` or `<session id>:transcript-ready`, the same on every copy"
    )
    revision: int = Field(ge=1, description="1, then one more each time late data changed the content")


class Participant(BaseModel):
    """One participant row of a RealtimeKit SessionSummary: one peer."""

    model_config = _OUT

    id: str = Field(description="the peer id")
    user_id: str | None
    custom_participant_id: str | None
    display_name: str | None
    joined_at: IsoTime | None = Field(description="first join; null if the peer never joined")
    left_at: IsoTime | None = Field(description="last leave (an interval open at the end closes there)")
    duration: Number = Field(description="connected time in minutes")


class _SummaryCommon(_Outbound):
    session_id: str
    associated_id: str | None
    title: str | None
    organization_id: str | None
    started_at: IsoTime
    ended_at: IsoTime
    duration_seconds: Number


class RealtimeKitSummary(_SummaryCommon):
    """SessionSummary of a RealtimeKit (meeting) session."""

    source: Literal["realtimekit"]
    type: Literal["meeting", "livestream", "participant"]
    end_reason: Literal["ended", "idle_timeout"]
    participants_total: int
    max_concurrent_participants: int
    minutes_consumed: Number
    participants: list[Participant] = Field(description="by join time (never joined last), then id")
    transcript_download_url: OnlyWhenKnown = None
    summary_download_url: OnlyWhenKnown = None
    chat_download_url: OnlyWhenKnown = None
    recording_status: str | None = Field(
        default=None, description="the newest recording's, when there is one"
    )
    recording_download_url: OnlyWhenKnown = None
    livestreaming_status: OnlyWhenKnown = None


class LivepeerSummary(_SummaryCommon):
    """SessionSummary of a Livepeer stream session: its counters at the newest snapshot."""

    source: Literal["livepeer"]
    type: Literal["stream"]
    end_reason: Literal["ended", "idle_timeout"]
    source_bytes: Number | None
    transcoded_bytes: Number | None
    source_segments: Number | None
    transcoded_segments: Number | None
    source_segments_duration: Number | None
    transcoded_segments_duration: Number | None
    avg_ingest_rate: Number | None
    avg_outgoing_rate: Number | None
    is_healthy: bool | None
    issues: list[str] | None
    recording_status: str | None
    recording_url: str | None
    mp4_url: str | None


class SessionSummary(RootModel[RealtimeKitSummary | LivepeerSummary]):
    """One per ended session (`source` says which kind); consumers keep the highest `revision`."""


class TranscriptReady(_Outbound):
    """One per session whose transcript link became known; a new revision when the link changes."""

    session_id: str
    meeting_id: str | None
    title: str | None
    organization_id: str | None
    transcript_download_url: str
    transcript_download_url_expiry: str | None
    session_status: Literal["LIVE", "ENDED"]
    ended_at: IsoTime | None
    participants_total: int
    minutes_consumed: Number
