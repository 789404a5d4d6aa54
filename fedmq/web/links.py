"""The URLs that open the pages on a job, and a QR code for a phone.

Everything a page needs to join rides in the URL's fragment (after ``#``): a
browser never sends the fragment to the server, so credentials and keys stay
out of HTTP logs, and the page reads them itself (docs/WEB.md lists the keys).

Invariants: pure string work except :func:`lan_address`, which asks the kernel
which local address routes outward (a UDP ``connect`` sends no packet).
"""

from __future__ import annotations

import io
import socket
from collections.abc import Mapping
from urllib.parse import quote, urlencode

#: documentation range (RFC 5737): connecting a UDP socket to it only picks a route
_ROUTE_PROBE = ("192.0.2.1", 9)


def page_url(base: str, page: str, params: Mapping[str, str | int | None]) -> str:
    """``base`` (``http[s]://host:port``) + ``page`` (``/`` or ``/agent``) + ``#params``."""
    fragment = urlencode({k: str(v) for k, v in params.items() if v is not None}, quote_via=quote)
    return f"{base.rstrip('/')}{page}" + (f"#{fragment}" if fragment else "")


def lan_address() -> str:
    """This machine's address as another device on the LAN reaches it (loopback if none)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(_ROUTE_PROBE)
            address: str = probe.getsockname()[0]
        except OSError:
            return "127.0.0.1"
    return address


def host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def qr_text(url: str) -> str:
    """A QR code of ``url`` drawn with block characters, for a terminal.

    Raises:
        ImportError: when segno (in the coordinator extra) is not installed.
    """
    import segno

    out = io.StringIO()
    segno.make(url, error="l").terminal(out=out, compact=True)
    return out.getvalue()
