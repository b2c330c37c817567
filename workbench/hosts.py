"""Hosts a server binds to and is reached by: whether an address keeps a server on this
machine only, and which address to tell clients elsewhere. Shared by the broker and the web
gateway, which are safe by default on loopback and ask for keys or a token anywhere else."""

from __future__ import annotations

import ipaddress
import socket


def is_loopback(host: str) -> bool:
    """Whether binding ``host`` keeps a server reachable from this machine only."""
    host = host.strip("[]")
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        pass  # a name: loopback if every address it has is
    try:
        found = {info[4][0] for info in socket.getaddrinfo(host, None)}
    except OSError:
        return False
    return bool(found) and all(ipaddress.ip_address(address.split("%")[0]).is_loopback
                               for address in found)


def advertised_host(host: str) -> str:
    """A host name or address that clients elsewhere can reach a server by, for its
    connection file: ``host`` itself unless it is a wildcard (0.0.0.0, ::), then this
    machine's address on its default route, else its name."""
    try:
        wildcard = ipaddress.ip_address(host).is_unspecified
    except ValueError:
        return host  # a name: clients resolve it as this machine did
    if not wildcard:
        return host
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    probe = socket.socket(family, socket.SOCK_DGRAM)
    try:  # a datagram socket's connect sends nothing: it only picks the outgoing address
        probe.connect(("2001:db8::1" if family == socket.AF_INET6 else "192.0.2.1", 9))
        found = probe.getsockname()[0]
        if not ipaddress.ip_address(found).is_loopback:
            return found
    except OSError:
        pass
    finally:
        probe.close()
    return socket.getfqdn()
