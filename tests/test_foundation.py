"""The foundation holds: real services from the fixtures, strict settings, redacted logs."""

from __future__ import annotations

import io
import json
import logging
import socket
import time
from collections.abc import Iterator

import pytest
import redis
import structlog
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from feature_store.errors import ConfigError, ServiceStartError
from feature_store.local_stack import LocalStack
from feature_store.logging import configure_logging
from feature_store.settings import Settings, get_settings, load_settings


# ---------------------------------------------------------------- services
async def test_fixture_redis_answers_and_is_isolated(redis_client, redis_db_url, unique) -> None:
    assert await redis_client.ping() is True
    assert await redis_client.dbsize() == 0  # flushed for this test
    await redis_client.set(f"{unique}:k", "v")
    assert await redis_client.get(f"{unique}:k") == b"v"
    assert int(redis_db_url.rsplit("/", 1)[1]) in range(1, 16)


async def test_broker_roundtrip_through_a_consumer_group(kafka_bootstrap, kafka_settings, unique) -> None:
    topic, group = f"foundation-{unique}", f"group-{unique}"
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, num_partitions=2, replication_factor=1)])
    finally:
        await admin.close()

    sent = {f"k{i}".encode(): f"v{i}".encode() for i in range(6)}
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap)
    await producer.start()
    try:
        for key, value in sent.items():
            await producer.send_and_wait(topic, value, key=key)
    finally:
        await producer.stop()

    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=kafka_bootstrap,
        group_id=group,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        **kafka_settings,
    )
    await consumer.start()
    try:
        got: dict[bytes, bytes] = {}
        deadline = time.monotonic() + 30
        while len(got) < len(sent) and time.monotonic() < deadline:
            for records in (await consumer.getmany(timeout_ms=500)).values():
                got.update((r.key, r.value) for r in records)
        assert got == sent
        await consumer.commit()
        partitions = [TopicPartition(topic, p) for p in (0, 1)]
        committed = [await consumer.committed(tp) for tp in partitions]
        assert sum(c or 0 for c in committed) == len(sent)
    finally:
        await consumer.stop()


def test_private_redis_stops_and_restarts_on_the_same_port(private_redis: LocalStack) -> None:
    url = private_redis.redis_url
    client = redis.Redis.from_url(url, socket_connect_timeout=1)
    client.set("k", "v")
    pid = private_redis.pids()["redis"]

    private_redis.stop_redis()
    with pytest.raises(redis.ConnectionError):
        client.ping()
    assert "redis" not in private_redis.pids()

    private_redis.start_redis()
    assert private_redis.redis_url == url
    assert private_redis.pids()["redis"] != pid
    assert client.ping() is True
    assert client.get("k") is None  # no persistence: a restart is an empty Redis

    private_redis.restart_redis()
    assert client.ping() is True
    client.close()


def test_a_stack_only_restarts_what_it_started() -> None:
    stack = LocalStack(redis_url="redis://127.0.0.1:1/0", services=("redis",))
    with stack:
        assert stack.redis_url == "redis://127.0.0.1:1/0"
        assert stack.pids() == {}
        with pytest.raises(ServiceStartError, match="private_redis"):
            stack.restart_redis()
        with pytest.raises(ServiceStartError, match="not part of this stack"):
            _ = stack.kafka_bootstrap


def test_a_taken_port_is_refused_before_anything_starts() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(ServiceStartError, match=f"port {port} is in use; pass --kafka-port"):
            LocalStack(kafka_port=port).start()


async def test_the_session_stack_serves_both_services(local_stack: LocalStack, service_origin) -> None:
    assert local_stack.env() == {
        "FEATURESTREAM_REDIS": local_stack.redis_url,
        "FEATURESTREAM_KAFKA": local_stack.kafka_bootstrap,
    }
    for name in ("redis", "kafka"):
        assert local_stack.owns(name) == (getattr(service_origin, name) == "local")
    assert local_stack.dead() == []


# ---------------------------------------------------------------- settings
def test_settings_reject_unknown_env_vars(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FEATURESTREAM_NOPE", "1")
    with pytest.raises(ConfigError, match="FEATURESTREAM_NOPE is not a setting"):
        load_settings()


def test_settings_reject_bad_values_with_the_env_var_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FEATURESTREAM_PARTITIONS", "0")
    with pytest.raises(ConfigError, match="FEATURESTREAM_PARTITIONS"):
        load_settings()
    with pytest.raises(ConfigError, match="FEATURESTREAM_REDIS"):
        load_settings(partitions=1, redis="localhost:6379")


def test_settings_read_env_and_test_vars_are_reserved(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    monkeypatch.setenv("FEATURESTREAM_TEST_SOMETHING", "ignored")
    monkeypatch.setenv("FEATURESTREAM_KAFKA", "127.0.0.1:9092")
    monkeypatch.setenv("FEATURESTREAM_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("FEATURESTREAM_API_KEYS", '{"app": "s3cret"}')
    monkeypatch.setenv("featurestream_log_level", "debug")
    settings = get_settings()
    assert get_settings() is settings  # built once
    assert settings.kafka == "127.0.0.1:9092"
    assert settings.data_dir == tmp_path
    assert settings.api_keys["app"].get_secret_value() == "s3cret"
    assert settings.log_level == "DEBUG"
    assert (settings.kafka_session_timeout_s, settings.kafka_heartbeat_s, settings.partitions) == (6, 1, 4)


def test_secrets_never_print() -> None:
    settings = Settings(
        redis="redis://:hunter2@127.0.0.1:6379/0",
        api_keys={"app": "s3cret"},
        admin_keys={"ops": "t0ps3cret"},
    )
    for text in (repr(settings), str(settings)):
        assert "hunter2" not in text
        assert "s3cret" not in text
        assert "redis://:***@127.0.0.1:6379/0" in text


@pytest.fixture
def log_stream() -> Iterator[io.StringIO]:
    stream = io.StringIO()
    yield stream
    logging.getLogger().handlers[:] = [
        h for h in logging.getLogger().handlers if getattr(h, "stream", None) is not stream
    ]


def test_logs_redact_secrets(log_stream: io.StringIO) -> None:
    settings = Settings(redis="redis://:hunter2@127.0.0.1:6379/0", api_keys={"app": "s3cret"}, log_json=True)
    configure_logging(settings, stream=log_stream)
    log = structlog.get_logger("test")
    log.info("connecting to redis://:hunter2@127.0.0.1:6379/0", api_key="s3cret", n_keys=3)
    log.info("settings", settings=settings.model_dump(), auth="Bearer abc.def")
    logging.getLogger("aiokafka").warning("stdlib says redis://user:hunter2@h:1/0")
    try:
        raise RuntimeError("failed at redis://:hunter2@h:1/0")
    except RuntimeError:
        log.exception("boom")

    text = log_stream.getvalue()
    for secret in ("hunter2", "s3cret", "abc.def"):
        assert secret not in text
    lines = [json.loads(line) for line in text.splitlines()]
    assert lines[0]["event"] == "connecting to redis://:***@127.0.0.1:6379/0"
    assert (lines[0]["api_key"], lines[0]["n_keys"]) == ("***", 3)
    assert lines[1]["settings"]["api_keys"] == "***"
    assert lines[1]["auth"] == "Bearer ***"
    assert lines[2]["logger"] == "aiokafka"
    assert "redis://user:***@h:1/0" in lines[2]["event"]
    assert "RuntimeError: failed at redis://:***@h:1/0" in lines[3]["exception"]


def test_log_level_filters(log_stream: io.StringIO) -> None:
    configure_logging(Settings(log_level="WARNING"), stream=log_stream)
    structlog.get_logger("test").info("quiet")
    structlog.get_logger("test").warning("loud")
    assert "quiet" not in log_stream.getvalue()
    assert "loud" in log_stream.getvalue()
