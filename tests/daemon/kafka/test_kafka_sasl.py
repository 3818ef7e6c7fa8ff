"""With a token configured, Kafka clients authenticate with SASL/PLAIN (the token as
the password); others are closed out with a log line."""

from __future__ import annotations

import struct
from collections.abc import Iterator
from pathlib import Path

import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer
from confluent_kafka import TopicPartition as CTopicPartition
from kafka import KafkaProducer

from tests.daemon.kafka.conftest import (
    KafkaDaemon,
    RawClient,
    make_kafka_daemon,
    request,
    response,
    until,
)

pytestmark = [pytest.mark.e2e]

TOKEN = "s3cret-token"


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KafkaDaemon]:
    d = make_kafka_daemon(Path(tmp_path_factory.mktemp("kafka-sasl")), token=TOKEN)
    d.start()
    yield d
    d.stop()
    assert "Traceback" not in d.log()


def _sasl(password: str) -> dict[str, str]:
    return {"security_protocol": "SASL_PLAINTEXT", "sasl_mechanism": "PLAIN",
            "sasl_plain_username": "svc", "sasl_plain_password": password}


def test_the_token_as_plain_password_lets_clients_in(secured: KafkaDaemon) -> None:
    p = KafkaProducer(bootstrap_servers=secured.bootstrap, acks="all", **_sasl(TOKEN))
    md = p.send("events", value=b"authenticated").get(timeout=15)
    p.close()
    c = Consumer({"bootstrap.servers": secured.bootstrap, "group.id": "audit",
                  "security.protocol": "SASL_PLAINTEXT", "sasl.mechanism": "PLAIN",
                  "sasl.username": "svc", "sasl.password": TOKEN,
                  "enable.auto.commit": False})
    c.assign([CTopicPartition("events", 0, OFFSET_BEGINNING)])
    got = []
    for _ in range(20):
        got += [m.value() for m in c.consume(10, timeout=0.5) if m.error() is None]
        if got:
            break
    c.close()
    assert b"authenticated" in got and md.offset >= 0


def test_a_wrong_password_fails_authentication_with_a_log_line(secured: KafkaDaemon) -> None:
    from kio.schema.errors import ErrorCode
    from kio.schema.sasl_authenticate.v2.request import SaslAuthenticateRequest
    from kio.schema.sasl_authenticate.v2.response import SaslAuthenticateResponse
    from kio.schema.sasl_handshake.v1.request import SaslHandshakeRequest
    from kio.schema.sasl_handshake.v1.response import SaslHandshakeResponse

    raw = RawClient(secured.kafka_port)
    raw.send(request(17, 1, SaslHandshakeRequest(mechanism="SCRAM-SHA-256")))
    refused = response(raw.receive() or b"", SaslHandshakeResponse, flexible_header=False)
    assert refused.error_code == ErrorCode.unsupported_sasl_mechanism
    assert refused.mechanisms == ("PLAIN",)
    raw.send(request(17, 1, SaslHandshakeRequest(mechanism="PLAIN")))
    ok = response(raw.receive() or b"", SaslHandshakeResponse, flexible_header=False)
    assert ok.error_code == ErrorCode.none
    raw.send(request(36, 2, SaslAuthenticateRequest(auth_bytes=b"\0svc\0wrong")))
    answer = response(raw.receive() or b"", SaslAuthenticateResponse, flexible_header=True)
    assert answer.error_code == ErrorCode.sasl_authentication_failed
    assert answer.error_message == ("authentication failed: wrong password: it must be the "
                                    "daemon's bearer token")
    raw.close()
    until(lambda: "SASL authentication of 127.0.0.1:" in secured.log())


def test_requests_before_authentication_close_the_connection(secured: KafkaDaemon) -> None:
    raw = RawClient(secured.kafka_port)
    raw.send(struct.pack(">hhih", 3, 1, 1, 0) + b"\xff\xff\xff\xff")  # Metadata v1, all
    assert raw.receive() is None
    raw.close()
    until(lambda: "api key 3 before SASL authentication" in secured.log())
