"""A process's private listening socket, for requests the other processes of a cluster forward to it.

The public port cannot be used for that: the workers of `--workers N` share it (SO_REUSEPORT), so a
connection to it reaches whichever worker the kernel picks. Each process instead binds its own socket
on `host` (loopback by default: the workers of one machine) with an ephemeral port, and publishes its
address in Redis. Used by the session router (routing.py) and the contact-center leader (channels).
"""

from __future__ import annotations

import socket

# Set by the forwarding process (its tag) on every relayed request; required on the private port.
FORWARDED_BY = "X-Cometd-Forwarded-By"

# Headers that describe one connection, not the message: never relayed (RFC 9110 7.6.1), plus the
# framing headers the relaying side sets again for the relayed body.
HOP_BY_HOP = frozenset({"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te",
                        "trailer", "transfer-encoding", "upgrade", "content-length"})


def bind_private(host: str) -> socket.socket:
    """A non-blocking socket bound to `host` on an ephemeral port (not listening yet)."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    try:
        sock.bind((host, 0))
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


def address_of(sock: socket.socket) -> str:
    """"host:port" of a bound socket, IPv6 hosts in brackets (as in a URL's authority)."""
    host, port = sock.getsockname()[:2]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def split_address(address: str) -> tuple[str, int]:
    """The inverse of `address_of`; ValueError if it is not "host:port"."""
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ValueError(f"not a host:port address: {address!r}")
    return host.strip("[]"), int(port)
