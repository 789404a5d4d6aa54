"""Broker addresses and paho client construction, shared by the agent and coordinator adapters.

The one place that knows how fedmq talks MQTT: protocol version, TLS,
credentials, last will, reconnect backoff. paho-mqtt 2.x callback API v2.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Literal
from urllib.parse import unquote, urlsplit

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from protocol import Publish

#: seconds between reconnect attempts: paho doubles the delay up to the maximum
RECONNECT_MIN_S = 1
RECONNECT_MAX_S = 30
#: how long a broker keeps a coordinator's session (and queued QoS 1 updates) after it drops
SESSION_EXPIRY_S = 3600


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
            raise ValueError(f"broker URL {url!r}: scheme must be mqtt:// or mqtts://")
        if not parts.hostname:
            raise ValueError(f"broker URL {url!r} has no host")
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
    return client


def connect(client: mqtt.Client, broker: BrokerURL, session: Session) -> None:
    """Start connecting in the background; paho's thread reconnects with backoff."""
    properties = None
    if session.mqtt5:
        properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        properties.SessionExpiryInterval = SESSION_EXPIRY_S if session.persistent else 0
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
