"""The service's Kafka connections over TLS, against a real Kafka-protocol broker.

The embedded tansu build has no working TLS listener of its own (`--cert`/`--key` leave it
speaking plaintext), so here it sits behind a TLS-terminating proxy and advertises the proxy
as its address, as a broker behind a TLS load balancer does: every connection a client makes,
the bootstrap and every one after it, is TLS to the proxy, verified against the test's own
CA. The proxy runs in the test's event loop, so everything the test itself does with Kafka
is asynchronous (aiokafka with the service's own client options), never a blocking client.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import ssl
import subprocess
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import orjson
import pytest
import redis.asyncio as aioredis
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import KafkaConnectionError

from service import constants as C
from service.config import Settings
from service.constants import Topics
from service.core.timeutil import iso_ms
from service.embedded import ensure_topics, start_kafka, topic_layout
from service.runtime import build_runtime, kafka_client_options, kafka_security
from tests.integration.harness import WorkerProcess, peer_event, session_message, wait_for, worker_env
from tests.tls_material import TlsFiles, write_tls_files

pytestmark = pytest.mark.integration

T0 = 1_767_261_600_000


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(1 << 16):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        writer.close()


class _TlsProxy:
    """TLS on 127.0.0.1:`port` (chosen by the system), relayed as plaintext to the broker on
    `upstream` (set once the broker runs: the broker must advertise this proxy's port)."""

    def __init__(self) -> None:
        self.port = 0
        self.upstream = 0


@contextlib.asynccontextmanager
async def _tls_proxy(files: TlsFiles) -> AsyncIterator[_TlsProxy]:
    proxy = _TlsProxy()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(files.cert, files.key)
    relays: set[asyncio.Future[object]] = set()

    async def relay(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", proxy.upstream)
        except OSError:
            writer.close()
            return
        both = asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
        relays.add(both)
        both.add_done_callback(relays.discard)

    server = await asyncio.start_server(relay, "127.0.0.1", 0, ssl=context)
    proxy.port = server.sockets[0].getsockname()[1]
    try:
        yield proxy
    finally:
        server.close()
        for both in list(relays):
            both.cancel()
        await asyncio.gather(*relays, return_exceptions=True)


@pytest.fixture
async def tls_kafka(tmp_path: Path) -> AsyncIterator[tuple[str, TlsFiles]]:
    """A fresh broker reachable only over TLS: its bootstrap address and the CA to trust."""
    files = write_tls_files(tmp_path)
    async with _tls_proxy(files) as proxy:  # bound first, so the broker cannot take its port
        with start_kafka(advertised_port=proxy.port) as broker:
            proxy.upstream = broker.port
            yield f"127.0.0.1:{proxy.port}", files


async def _stop(worker: WorkerProcess, within: float = 40.0) -> int:
    """SIGTERM, then wait without blocking the event loop: the worker's shutdown (its last
    commit, leaving the group) goes through the proxy running in this loop."""
    worker.proc.send_signal(signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        await asyncio.to_thread(worker.proc.wait, within)
    if worker.alive():
        worker.proc.kill()  # not worker.stop()'s wait, which would block the proxy's loop
        await asyncio.to_thread(worker.proc.wait, 10)
    return worker.stop()  # only closes its log now


def _tls_settings(bootstrap: str, files: TlsFiles, **more: object) -> Settings:
    return Settings(
        kafka_bootstrap_servers=bootstrap,
        kafka_security_protocol="SSL",
        kafka_ssl_cafile=str(files.ca),
        **more,
    )


async def test_a_worker_consumes_commits_and_publishes_over_tls(
    tls_kafka: tuple[str, TlsFiles], redis_url: str
) -> None:
    """The worker joins its group, applies a session, commits, and publishes its summary, all
    through TLS; the topics are created and the log produced over TLS with the same options."""
    bootstrap, files = tls_kafka
    topics = Topics(f"tls{uuid.uuid4().hex[:6]}.")
    options = kafka_client_options(_tls_settings(bootstrap, files))
    await ensure_topics(bootstrap, topic_layout(topics, inbound=2, outbound=1), **options)
    sid = f"tls-{uuid.uuid4()}"
    log = [
        (topics.rtk_sessions, session_message(sid, "LIVE", T0, T0, None)),
        (topics.rtk_peer_events, peer_event(sid, "peer-a", "PEER_JOINING", T0 + 1_000)),
        (topics.rtk_peer_events, peer_event(sid, "peer-a", "PEER_LEAVING", T0 + 61_000)),
        (topics.rtk_sessions, session_message(sid, "ENDED", T0, T0 + 120_000, T0 + 120_000)),
    ]
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, enable_idempotence=False, **options)
    ends: dict[TopicPartition, int] = {}  # the offset after each partition's last record
    await producer.start()
    try:
        for topic, message in log:
            sent = await producer.send_and_wait(topic, orjson.dumps(message), key=sid.encode())
            ends[TopicPartition(sent.topic, sent.partition)] = sent.offset + 1
    finally:
        await producer.stop()

    env = worker_env(
        bootstrap, redis_url, topics, KAFKA_SECURITY_PROTOCOL="SSL", KAFKA_SSL_CAFILE=str(files.ca)
    )
    worker = WorkerProcess(env)
    redis = aioredis.Redis.from_url(redis_url)
    summaries = AIOKafkaConsumer(
        topics.summaries, bootstrap_servers=bootstrap, auto_offset_reset="earliest", **options
    )
    # A consumer of the worker's group that never joins it: it reads the committed offsets.
    offsets = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, group_id=env["CONSUMER_GROUP"], enable_auto_commit=False, **options
    )
    await offsets.start()
    try:

        async def ended() -> bool:
            assert worker.alive(), worker.log_text()
            return await redis.hget(C.session_keys(sid)[0], "status") == b"ENDED"

        await wait_for(ended, 60, "the worker to apply the session over TLS")
        await summaries.start()
        record = await asyncio.wait_for(summaries.getone(), 30)
        summary = orjson.loads(record.value)
        assert (summary["session_id"], summary["ended_at"]) == (sid, iso_ms(T0 + 120_000))
        assert summary["minutes_consumed"] == 1.0

        async def committed() -> bool:
            return all([await offsets.committed(tp) == end for tp, end in ends.items()])

        await wait_for(committed, 30, "the worker's offsets committed over TLS")
    finally:
        await summaries.stop()
        await offsets.stop()
        assert await _stop(worker) == 0, worker.log_text()
        await redis.aclose()
    assert "waiting for Kafka" not in worker.log_text()


async def test_a_broker_whose_certificate_is_not_trusted_is_refused(tls_kafka: tuple[str, TlsFiles]) -> None:
    """Without the test CA (the system's trust store only) the TLS handshake fails on the
    certificate: it is verified, not merely used for encryption. With the CA it succeeds."""
    bootstrap, files = tls_kafka
    host, port = bootstrap.split(":")
    untrusting = Settings(kafka_bootstrap_servers=bootstrap, kafka_security_protocol="SSL")
    for settings, trusted in ((untrusting, False), (_tls_settings(bootstrap, files), True)):
        security = kafka_security(settings)
        assert security is not None and security.ssl_context is not None
        if trusted:
            _, writer = await asyncio.open_connection(host, int(port), ssl=security.ssl_context)
            writer.close()
        else:
            with pytest.raises(ssl.SSLCertVerificationError):
                await asyncio.open_connection(host, int(port), ssl=security.ssl_context)
    # The service's own clients give up on that broker.
    rt = build_runtime(untrusting)
    try:
        with pytest.raises(KafkaConnectionError):
            await asyncio.wait_for(rt.connect_broker(), 30)
    finally:
        with contextlib.suppress(Exception):
            await rt.broker.stop()
        await rt.redis.aclose()
