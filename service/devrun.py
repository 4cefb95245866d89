"""`python -m service dev`: everything on one machine for a newcomer."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Awaitable

from aiokafka.errors import KafkaError
from pydantic import ValidationError

from service.config import Settings, describe_invalid
from service.constants import Topics
from service.demo import run_demo
from service.embedded import (
    EmbeddedError,
    EmbeddedServer,
    ensure_topics,
    spawn,
    start_kafka,
    start_redis,
    topic_layout,
)
from service.errors import ConfigurationError
from service.runtime import kafka_client_options

_CHILD_GRACE = 20.0  # seconds a worker gets to finish its batch and commit
_POLL = 0.2
_SIGNALS = (signal.SIGINT, signal.SIGTERM)


async def run_dev(settings: Settings, *, demo: bool) -> int:
    """Run broker, Redis, worker and API until Ctrl-C or SIGTERM; the exit code.

    Kafka and Redis are embedded unless KAFKA_BOOTSTRAP_SERVERS / REDIS_URL are
    configured: a shared Redis is never written to by accident.
    """
    loop = asyncio.get_running_loop()
    stop, hurry = asyncio.Event(), asyncio.Event()

    def on_signal() -> None:
        # A second Ctrl-C while stopping skips the grace period.
        (hurry if stop.is_set() else stop).set()

    for sig in _SIGNALS:
        loop.add_signal_handler(sig, on_signal)
    servers: list[EmbeddedServer] = []
    children: dict[str, subprocess.Popen[bytes]] = {}
    demo_stop = asyncio.Event()
    demo_task: asyncio.Task[None] | None = None
    try:
        bootstrap, redis_url = _servers(settings, servers)
        # The embedded broker speaks PLAINTEXT (_servers refuses other settings for it); a
        # configured one gets the service's security settings, as the worker and API do.
        options = kafka_client_options(settings)
        topics = Topics(settings.topic_prefix)
        layout = topic_layout(topics, inbound=6, outbound=3)
        if not await _unless_stopped(stop, ensure_topics(bootstrap, layout, **options)):
            return 0
        env = {
            **os.environ,
            "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
            "REDIS_URL": redis_url,
            "HTTP_PORT": str(settings.http_port),
            "PYTHONUNBUFFERED": "1",
        }
        for role in ("worker", "api"):
            children[role] = spawn([sys.executable, "-m", "service", role], env=env)
        if demo:
            demo_task = asyncio.create_task(
                run_demo(bootstrap, topics, stop=demo_stop, client_options=options)
            )
        _banner(settings, bootstrap, redis_url, servers, children, demo)
        return await _watch(stop, servers, children, demo_task)
    except (EmbeddedError, ConfigurationError, KafkaError) as e:
        _say(f"sessionpulse dev: {e}")
        return 1
    finally:
        if servers or children:
            _say("sessionpulse dev: stopping")
        demo_stop.set()
        if demo_task is not None:
            await _finish(demo_task, "demo traffic")
        await _stop_children(children, hurry)
        # Last, so the worker can still commit and flush while it stops.
        for server in reversed(servers):
            server.stop()
        for sig in _SIGNALS:
            loop.remove_signal_handler(sig)


def main_dev(argv_demo: bool) -> int:
    """Entry point for `python -m service dev [--demo]`."""
    try:
        settings = Settings()
    except ValidationError as exc:
        _say(f"sessionpulse dev: invalid configuration: {describe_invalid(exc)}")
        return 1
    return asyncio.run(run_dev(settings, demo=argv_demo))


def _servers(settings: Settings, servers: list[EmbeddedServer]) -> tuple[str, str]:
    """The Kafka bootstrap and Redis URL to use, starting embedded ones where unset."""
    configured = settings.model_fields_set
    bootstrap = settings.kafka_bootstrap_servers
    if "kafka_bootstrap_servers" not in configured:
        if settings.kafka_security_protocol != "PLAINTEXT":
            raise ConfigurationError(
                f"KAFKA_SECURITY_PROTOCOL={settings.kafka_security_protocol} needs KAFKA_BOOTSTRAP_SERVERS:"
                " the embedded broker speaks PLAINTEXT only"
            )
        kafka = start_kafka()
        servers.append(kafka)
        bootstrap = kafka.bootstrap
    redis_url = settings.redis_url
    if "redis_url" not in configured:
        redis = start_redis()
        servers.append(redis)
        redis_url = redis.url
    return bootstrap, redis_url


async def _unless_stopped(stop: asyncio.Event, work: Awaitable[None]) -> bool:
    """Await `work`; False, with `work` cancelled, if `stop` is set first."""
    task = asyncio.ensure_future(work)
    stopped = asyncio.create_task(stop.wait())
    await asyncio.wait({task, stopped}, return_when=asyncio.FIRST_COMPLETED)
    stopped.cancel()
    if task.done():
        task.result()
        return True
    await _finish(task, "start-up", grace=0)
    return False


async def _watch(
    stop: asyncio.Event,
    servers: list[EmbeddedServer],
    children: dict[str, subprocess.Popen[bytes]],
    demo_task: asyncio.Task[None] | None,
) -> int:
    """Wait for a stop signal (0) or for something to die on its own (1)."""
    while not stop.is_set():
        for role, child in children.items():
            if (rc := child.poll()) is not None:
                _say(f"{role} (pid {child.pid}) exited unexpectedly with code {rc}")
                return 1
        for server in servers:
            if (rc := server.poll()) is not None:
                _say(f"{server.name} (pid {server.pid}) exited with code {rc}:\n{server.log_tail()}")
                return 1
        if demo_task is not None and demo_task.done():
            return 1  # _finish reports why
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), _POLL)
    return 0


async def _finish(task: asyncio.Task[None], what: str, grace: float = 5.0) -> None:
    """Give a task `grace` seconds to end by itself, then cancel it; never raises."""
    await asyncio.wait({task}, timeout=grace)
    if not task.done():
        task.cancel()
        await asyncio.wait({task})
    if not task.cancelled() and (error := task.exception()) is not None:
        _say(f"{what} failed: {error!r}")


async def _stop_children(children: dict[str, subprocess.Popen[bytes]], hurry: asyncio.Event) -> None:
    for child in children.values():
        if child.poll() is None:
            child.terminate()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + _CHILD_GRACE
    while any(c.poll() is None for c in children.values()):
        if hurry.is_set() or loop.time() > deadline:
            break
        await asyncio.sleep(0.1)
    for role, child in children.items():
        if child.poll() is None:
            _say(f"{role} (pid {child.pid}) is still running; killing it")
            child.kill()
            child.wait()


def _banner(
    settings: Settings,
    bootstrap: str,
    redis_url: str,
    servers: list[EmbeddedServer],
    children: dict[str, subprocess.Popen[bytes]],
    demo: bool,
) -> None:
    pids = {s.name: f"  ({s.name}, pid {s.pid})" for s in servers}
    api = f"http://{settings.http_host}:{settings.http_port}"
    lines = [
        "sessionpulse dev",
        f"  Kafka   {bootstrap}{pids.get('tansu', '')}",
        f"  Redis   {redis_url}{pids.get('valkey', '')}",
        f"  topics  prefixed {settings.topic_prefix!r}" if settings.topic_prefix else "",
        f"  worker  pid {children['worker'].pid}",
        f"  API     {api}/v1/sessions  (pid {children['api'].pid})",
        f"  docs    {api}/docs",
        "  demo    synthetic meetings on rtk.sessions and rtk.peer-events" if demo else "",
        "Ctrl-C stops everything.",
    ]
    _say("\n".join(line for line in lines if line))


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)
