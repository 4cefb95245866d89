"""Names shared by Python and Lua: Kafka topics and every Redis key (docs/redis-keys.md)."""

from __future__ import annotations

from dataclasses import dataclass

# Inbound topics (CONTRACT section 2).
RTK_SESSIONS = "rtk.sessions"
RTK_PEER_EVENTS = "rtk.peer-events"
RTK_PEER_REPORTS = "rtk.peer-reports"
RTK_WEBHOOKS = "rtk.webhooks"
LIVEPEER_SESSIONS = "livepeer.sessions"
LIVEPEER_WEBHOOKS = "livepeer.webhooks"

# Outbound topics.
SUMMARIES = "sessions.summaries"
TRANSCRIPT_READY = "sessions.transcript-ready"
SUMMARY_REQUESTS = "sessions.summary-requests"
DEAD_LETTER = "sessions.dead-letter"


@dataclass(frozen=True)
class Topics:
    """Topic names with TOPIC_PREFIX applied."""

    prefix: str = ""

    def name(self, base: str) -> str:
        return f"{self.prefix}{base}"

    @property
    def rtk_sessions(self) -> str:
        return self.name(RTK_SESSIONS)

    @property
    def rtk_peer_events(self) -> str:
        return self.name(RTK_PEER_EVENTS)

    @property
    def peer_reports(self) -> str:
        return self.name(RTK_PEER_REPORTS)

    @property
    def rtk_webhooks(self) -> str:
        return self.name(RTK_WEBHOOKS)

    @property
    def livepeer_sessions(self) -> str:
        return self.name(LIVEPEER_SESSIONS)

    @property
    def livepeer_webhooks(self) -> str:
        return self.name(LIVEPEER_WEBHOOKS)

    @property
    def summaries(self) -> str:
        return self.name(SUMMARIES)

    @property
    def transcript_ready(self) -> str:
        return self.name(TRANSCRIPT_READY)

    @property
    def summary_requests(self) -> str:
        return self.name(SUMMARY_REQUESTS)

    @property
    def dead_letter(self) -> str:
        return self.name(DEAD_LETTER)

    def strip(self, topic: str) -> str:
        """The contract name of a (prefixed) topic."""
        return topic[len(self.prefix) :] if self.prefix and topic.startswith(self.prefix) else topic


# Redis keys. Every key of one session carries the hash tag {<session id>} so a
# session's update is one atomic script on one Redis Cluster node; the global
# indexes are written separately (and idempotently) by the worker.
KEY_PREFIX = "sp"


def session_keys(session_id: str) -> list[str]:
    """The per-session keys, in the order the Lua scripts expect them as KEYS."""
    tag = "{" + session_id + "}"
    return [
        f"{KEY_PREFIX}:{tag}:session",  # HASH  session fields and derived numbers
        f"{KEY_PREFIX}:{tag}:pev",  # HASH  peer id -> sorted compact event list
        f"{KEY_PREFIX}:{tag}:piv",  # HASH  peer id -> connection intervals
        f"{KEY_PREFIX}:{tag}:events",  # HASH  dedupe key -> peer event JSON as received
        f"{KEY_PREFIX}:{tag}:ids",  # SET   peer event ids and session message digests seen
        f"{KEY_PREFIX}:{tag}:art",  # HASH  webhook artifacts: v:<slot> -> JSON, r:<slot> -> rank
    ]


def report_key(peer_id: str) -> str:
    """The newest PeerReport of one peer (a HASH: session_id, rank, peer_report)."""
    return f"{KEY_PREFIX}:report:{{{peer_id}}}"


IDX_SESSIONS = f"{KEY_PREFIX}:idx:sessions"  # ZSET session id by started_at ms
IDX_LIVE = f"{KEY_PREFIX}:idx:live"  # ZSET live session id by newest event ms
WEBHOOK_SEEN = f"{KEY_PREFIX}:webhook"  # STRING <this>:<provider>:<delivery id>, set once published
OUTBOX = f"{KEY_PREFIX}:outbox"  # ZSET session id with outbound messages due, by change counter
# STRING, a counter: written before each WAIT for replicas (REDIS_WAIT_REPLICAS), so that the
# WAIT covers every write made before it.
REPLICATED = f"{KEY_PREFIX}:replicated"


# Livepeer stream sessions (CONTRACT 4.3): their own keys and indexes, apart from the
# RealtimeKit sessions that /v1/sessions lists.
def stream_keys(session_id: str) -> list[str]:
    """The per-stream-session keys, in the order apply_livepeer.lua expects them as KEYS."""
    tag = "{" + session_id + "}"
    return [
        f"{KEY_PREFIX}:{tag}:stream",  # HASH  newest snapshot, the one before, recording, end
        f"{KEY_PREFIX}:{tag}:stream-ids",  # SET   snapshot and webhook digests seen
    ]


def parent_sessions_key(parent_id: str) -> str:
    """ZSET: the stream sessions of one parent stream, by createdAt ms."""
    return f"{KEY_PREFIX}:idx:parent:{{{parent_id}}}"


def parent_idle_key(parent_id: str) -> str:
    """ZSET: the times of the parent stream's `stream.idle` webhooks (member and score)."""
    return f"{KEY_PREFIX}:idle:{{{parent_id}}}"


IDX_LIVE_STREAMS = f"{KEY_PREFIX}:idx:live-streams"  # ZSET live stream session id by lastSeen ms
OUTBOX_STREAMS = f"{KEY_PREFIX}:outbox:streams"  # ZSET stream session id with a summary due, by ver
