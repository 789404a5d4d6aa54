"""Broker addresses and paho client construction, shared by the agent and coordinator adapters.

The one place that knows how fedmq talks MQTT: protocol version, TLS,
credentials, last will, reconnect backoff. paho-mqtt 2.x callback API v2.
"""

from __future__ import annotations

import logging
import ssl
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Literal
from urllib.parse import unquote, urlsplit

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from protocol import Publish

log = logging.getLogger("fedmq.transport")

#: seconds between reconnect attempts: paho doubles the delay up to the maximum
RECONNECT_MIN_S = 1
RECONNECT_MAX_S = 30
#: how long a broker keeps a coordinator's session (and queued QoS 1 updates) after it drops
SESSION_EXPIRY_S = 3600
#: an MQTT PUBLISH packet's bytes around its payload: fixed header, a fedmq topic (at most
#: about 150 bytes), packet id and properties, with room to spare
PACKET_OVERHEAD = 1024
#: a connection the broker closes sooner than this after accepting it may have been
#: taken over by another client with the same client id
SHORT_SESSION_S = 10.0


def packet_bound(max_payload_bytes: int) -> int:
    """The largest MQTT packet that carries a payload of at most ``max_payload_bytes``."""
    return max_payload_bytes + PACKET_OVERHEAD


def redact(url: str) -> str:
    """``url`` with the password in its ``user:password@`` part replaced by ``***``: what
    may be printed or logged of a URL as given (:class:`BrokerURL` never shows one)."""
    scheme, sep, rest = url.rpartition("://")
    userinfo, at, host = rest.rpartition("@")
    if not at or ":" not in userinfo:
        return url
    return f"{scheme}{sep}{userinfo.split(':', 1)[0]}:***@{host}"


@dataclass(frozen=True, slots=True)
class BrokerURL:
    """Where the broker is and how to log in: ``mqtt[s]://[user[:pass]@]host[:port]``."""

    host: str
    port: int
    tls: bool = False
    username: str | None = None
    password: str | None = None

    @classmethod
    def parse(cls, url: str) -> BrokerURL:
        """Parse a broker URL; a bare ``host[:port]`` means plain ``mqtt://``.

        Raises:
            ValueError: for another scheme or a missing host.
        """
        parts = urlsplit(url if "://" in url else f"mqtt://{url}")
        if parts.scheme not in ("mqtt", "mqtts", "tcp", "ssl"):
            raise ValueError(f"broker URL {redact(url)!r}: scheme must be mqtt:// or mqtts://")
        if not parts.hostname:
            raise ValueError(f"broker URL {redact(url)!r} has no host")
        tls = parts.scheme in ("mqtts", "ssl")
        return cls(
            host=parts.hostname,
            port=parts.port or (8883 if tls else 1883),
            tls=tls,
            username=unquote(parts.username) if parts.username else None,
            password=unquote(parts.password) if parts.password else None,
        )

    def with_credentials(self, username: str | None, password: str | None) -> BrokerURL:
        """A copy with these credentials, where given (flags override the URL)."""
        return BrokerURL(
            self.host,
            self.port,
            self.tls,
            username if username is not None else self.username,
            password if password is not None else self.password,
        )

    def __str__(self) -> str:
        user = f"{self.username}@" if self.username else ""
        return f"{'mqtts' if self.tls else 'mqtt'}://{user}{self.host}:{self.port}"


@dataclass(frozen=True, slots=True)
class Session:
    """How one client connects: identity, protocol, persistence, TLS trust."""

    client_id: str
    mqtt5: bool = True
    #: keep the broker-side session (subscriptions, queued QoS 1 messages) across reconnects
    persistent: bool = False
    #: with ``persistent``: take over the session a previous process left (``--resume``)
    #: instead of starting a fresh one on the first connect
    resume_session: bool = False
    keepalive_s: int = 30
    ca_file: Path | None = None
    certfile: Path | None = None
    keyfile: Path | None = None
    #: MQTT 5: the largest packet this client accepts; the broker drops larger messages
    #: for it instead of sending them, so they never reach its memory (None: no limit)
    max_packet_size: int | None = None


def make_client(broker: BrokerURL, session: Session, will: Publish | None = None) -> mqtt.Client:
    """A configured, not yet connected, paho client."""
    protocol = mqtt.MQTTv5 if session.mqtt5 else mqtt.MQTTv311
    client = mqtt.Client(
        callback_api_version=CallbackAPIVersion.VERSION2,
        client_id=session.client_id,
        protocol=protocol,
        clean_session=None if session.mqtt5 else not session.persistent,
    )
    client.reconnect_delay_set(RECONNECT_MIN_S, RECONNECT_MAX_S)
    if broker.username is not None:
        client.username_pw_set(broker.username, broker.password)
    if broker.tls:
        client.tls_set(
            ca_certs=str(session.ca_file) if session.ca_file else None,
            certfile=str(session.certfile) if session.certfile else None,
            keyfile=str(session.keyfile) if session.keyfile else None,
            tls_version=ssl.PROTOCOL_TLS_CLIENT,
        )
    if will is not None:
        client.will_set(will.topic, will.payload, qos=1, retain=will.retain)
    where = f"{session.client_id}: {broker.host}:{broker.port}"

    def connect_failed(_client: mqtt.Client, _userdata: object) -> None:
        # paho calls this inside its ``except OSError``: the error is the one in flight
        log.warning("%s: %s; retrying", where, explain_connect_failure(sys.exc_info()[1]))

    def publish_refused(_c: mqtt.Client, _u: object, mid: int, code: object, _p: object) -> None:
        if getattr(code, "is_failure", False):  # MQTT 5 only: 3.1.1 has no reason codes
            log.warning("%s: the broker refused publish %d: %s: its ACL does not let %s "
                        "publish there (docs/SECURITY.md)", where, mid, code, broker.username)

    client.on_connect_fail = connect_failed
    client.on_publish = publish_refused
    return client


def explain_connect_failure(exc: BaseException | None) -> str:
    """Why a connection attempt failed, with a hint where the cause is usually ours."""
    if isinstance(exc, ssl.SSLError):
        return (
            f"TLS handshake failed: {exc}. Hint: --ca-file must be the provisioned ca.crt, "
            "and the broker's name must be one of the --host names given to fedmq provision "
            "(openssl s_client -connect HOST:PORT -CAfile ca.crt -verify_hostname HOST says "
            "which)"
        )
    return f"cannot connect: {exc}" if exc is not None else "cannot connect"


def explain_disconnect(reason_code: object, client_id: str, connected_for_s: float | None) -> str:
    """A disconnect's reason, with a hint when another client may have taken this one's
    session: the broker said so (MQTT 5 reason 0x8E), or it closed, with no reason, a
    connection it had accepted moments before, as Mosquitto 2.0 does to the older of two
    clients with one client id (the two then take turns every reconnect)."""
    reason = str(reason_code)
    taken = reason.lower() == "session taken over"
    brief = connected_for_s is not None and connected_for_s < SHORT_SESSION_S
    if not taken and not (brief and reason.lower() == "unspecified error"):
        return reason
    if taken:
        what = f"{reason}: another client connected with client id {client_id}"
    else:
        what = (f"the broker closed the connection {connected_for_s:.1f} s after accepting "
                f"it: another client may have taken over the session (client id {client_id})")
    return (
        f"{what}. Hint: the same agent running twice, or someone else using its password; "
        "each connection takes the session from the other until one stops"
    )
def connect(client: mqtt.Client, broker: BrokerURL, session: Session) -> None:
    """Start connecting in the background; paho's thread reconnects with backoff."""
    properties = None
    if session.mqtt5:
        properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        properties.SessionExpiryInterval = SESSION_EXPIRY_S if session.persistent else 0
        if session.max_packet_size is not None:
            properties.MaximumPacketSize = session.max_packet_size
    # Clean only on the first connect: paho's reconnects then keep the session, so QoS 1
    # messages queued by the broker during a network blip are delivered afterwards.
    clean_start: bool | Literal[3] = mqtt.MQTT_CLEAN_START_FIRST_ONLY
    if session.persistent and session.resume_session:
        clean_start = False
    client.connect_async(
        broker.host,
        broker.port,
        keepalive=session.keepalive_s,
        clean_start=clean_start,
        properties=properties,
    )
    client.loop_start()


def refused_for_good(reason_code: object) -> str | None:
    """If a CONNACK refusal will not go away by retrying, say why; else None."""
    name = str(reason_code).lower()
    for marker in ("not authorized", "bad user name or password", "banned", "identifier"):
        if marker in name:
            return f"broker refused the connection: {reason_code}"
    return None
