"""REDIS_CLUSTER=true against a real three-master valkey cluster, and single-slot scripts.

The end-to-end test of test_pipeline.py runs here unchanged, with the worker process, the
API and the test's own client all on the cluster.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Iterator
from importlib import resources

import httpx
import pytest
import pytest_asyncio
from redis.asyncio.cluster import RedisCluster
from redis.crc import key_slot

from service import constants as C
from service.constants import Topics
from service.embedded import free_port, start_redis_cluster

from . import test_pipeline
from .harness import WorkerProcess, wait_for, worker_env

pytestmark = pytest.mark.integration

ODD_IDS = ["plain", "with{brace", "with}brace", "{tag}", "a:b:c", "sp ace", "new\nline", "x" * 10_000, "ünï"]


@pytest.fixture(scope="module")
def cluster_url() -> Iterator[str]:
    with start_redis_cluster(3) as cluster:
        yield cluster.url


@pytest_asyncio.fixture(loop_scope="session")
async def cluster_client(cluster_url: str) -> AsyncIterator[RedisCluster]:
    client = RedisCluster.from_url(cluster_url)
    await client.initialize()
    yield client
    await client.aclose()


@pytest_asyncio.fixture(loop_scope="session")
async def cluster_api(
    kafka_bootstrap: str, cluster_url: str, topics: Topics
) -> AsyncIterator[httpx.AsyncClient]:
    """`python -m service api` as its own process on the cluster, as it runs in production."""
    port = free_port()
    env = worker_env(kafka_bootstrap, cluster_url, topics, REDIS_CLUSTER="true", HTTP_PORT=str(port))
    proc = WorkerProcess(env, command="api")
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:

            async def up() -> bool:
                try:
                    return (await client.get("/healthz")).status_code == 200
                except httpx.TransportError:
                    return False

            await wait_for(up, 30, "the API to listen")
            yield client
    finally:
        proc.stop()


async def test_end_to_end_on_a_three_master_cluster(
    kafka_bootstrap: str,
    cluster_url: str,
    topics: Topics,
    cluster_client: RedisCluster,
    cluster_api: httpx.AsyncClient,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    nodes = cluster_client.get_primaries()
    assert len(nodes) == 3
    monkeypatch.setenv("REDIS_CLUSTER", "true")  # the worker process inherits it
    await test_pipeline.test_end_to_end_matches_the_rules(
        kafka_bootstrap,
        cluster_url,
        topics,
        cluster_client,  # type: ignore[arg-type]
        cluster_api,
    )
    # The sessions are spread over the masters, not all on one.
    holding = [await cluster_client.execute_command("DBSIZE", target_nodes=n) for n in nodes]
    assert sum(1 for n in holding if n) == 3, holding


@pytest.mark.parametrize("sid", ODD_IDS)
def test_every_script_call_uses_keys_of_one_hash_slot(sid: str) -> None:
    # The KEYS each script is called with (store.py, stream_store.py): one slot per call.
    for keys in (C.session_keys(sid), C.stream_keys(sid), [C.report_key(sid)], [C.parent_idle_key(sid)]):
        assert len({key_slot(k.encode()) for k in keys}) == 1, keys
    # A tag inside the id cannot move a session's keys: the first {...} of the key is ours.
    assert C.session_keys(sid)[0].startswith("sp:{" + sid + "}")


SCRIPTS = ("apply_rtk", "apply_livepeer", "revision", "outbox_done", "peer_report", "read")


@pytest.mark.parametrize("name", SCRIPTS)
def test_scripts_touch_only_the_keys_they_are_given(name: str) -> None:
    source = resources.files("service").joinpath(f"lua/{name}.lua").read_text("utf-8")
    code = "\n".join(line.split("--", 1)[0] for line in source.splitlines())
    # Every redis.call names its key through KEYS (directly, or a local bound to KEYS[n], or a
    # loop over KEYS), never a name built in the script.
    bound = set(re.findall(r"\b(K_?\w*)\s*(?:,\s*\w+\s*)*=\s*KEYS\[", code))
    for names in re.findall(r"local\s+([\w,\s]+?)\s*=\s*KEYS\[\d\](?:\s*,\s*KEYS\[\d\])*", code):
        bound |= {n.strip() for n in names.split(",")}
    loops = set(re.findall(r"for\s+\w+,\s*(\w+)\s+in\s+ipairs\(KEYS\)", code))
    for call in re.findall(r"redis\.call\('(\w+)',\s*([^,)]+)", code):
        command, first = call
        first = first.strip()
        assert first.startswith("KEYS[") or first in bound | loops, (name, command, first)
