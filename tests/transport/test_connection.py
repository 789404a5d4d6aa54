"""What the adapters log when a connection fails or ends: the reason, and a hint."""

from __future__ import annotations

import ssl

from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.reasoncodes import ReasonCode

from transport.connection import explain_connect_failure, explain_disconnect


def code(name: str) -> ReasonCode:
    return ReasonCode(PacketTypes.DISCONNECT, name)


def test_a_session_taken_over_is_named_with_the_client_id_and_a_hint() -> None:
    why = explain_disconnect(code("Session taken over"), "fedmq-j-pi-7", 3600.0)
    assert why.startswith("Session taken over") and "fedmq-j-pi-7" in why
    assert "running twice" in why


def test_a_brief_connection_closed_without_a_reason_may_be_a_takeover() -> None:
    # Mosquitto 2.0 closes the older of two same-id connections without a DISCONNECT
    why = explain_disconnect(code("Unspecified error"), "fedmq-j-pi-7", 1.0)
    assert "1.0 s after accepting" in why and "taken over" in why and "running twice" in why


def test_other_disconnects_are_just_their_reason() -> None:
    assert explain_disconnect(code("Unspecified error"), "c", 600.0) == "Unspecified error"
    assert explain_disconnect(code("Server shutting down"), "c", 1.0) == "Server shutting down"
    assert explain_disconnect(code("Unspecified error"), "c", None) == "Unspecified error"


def test_a_failed_tls_handshake_says_which_files_to_check() -> None:
    why = explain_connect_failure(ssl.SSLCertVerificationError("certificate verify failed"))
    assert why.startswith("TLS handshake failed") and "ca.crt" in why and "--host" in why
    assert explain_connect_failure(ConnectionRefusedError(111, "Connection refused")) == (
        "cannot connect: [Errno 111] Connection refused")
