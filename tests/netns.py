"""Two Linux network namespaces joined by a veth pair: a second host for tests, on one machine.

Made with iproute2's ``ip netns``, which needs root. The namespaces share this machine's
files and users, which two hosts would not: a broker's Unix socket and /dev/shm are reachable
from both, so a test about the network turns those off (``workbench broker
--no-local-socket --no-shared-memory``).
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import uuid
from dataclasses import dataclass

COMMAND_TIMEOUT = 10.0
#: A broker's flags in a namespace, as a second host sees it: no shortcut through this
#: machine's files (the module's docstring).
ACROSS = ("--no-local-socket", "--no-shared-memory")


class NamespacesUnavailable(Exception):
    """This machine or user cannot make network namespaces; the message says why."""


@dataclass(frozen=True)
class Host:
    """One namespace: its name, its end of the veth pair and that end's address."""

    namespace: str
    interface: str
    address: str

    def command(self, *argv: str) -> list[str]:
        """``argv`` run inside this namespace (``ip netns exec`` execs it: same pid)."""
        return ["ip", "netns", "exec", self.namespace, *argv]

    def namespace_id(self) -> str:
        """What /proc/PID/ns/net reads for a process in this namespace."""
        return f"net:[{os.stat(f'/run/netns/{self.namespace}').st_ino}]"

    def kill_processes(self) -> None:
        """Kill every process in this namespace, by pid (they are all a test's)."""
        try:
            found = subprocess.run(["ip", "netns", "pids", self.namespace],
                                   capture_output=True, text=True, timeout=COMMAND_TIMEOUT)
        except (OSError, subprocess.SubprocessError):
            return
        for pid in found.stdout.split():
            try:
                os.kill(int(pid), signal.SIGKILL)
            except ProcessLookupError:
                pass


@dataclass(frozen=True)
class HostPair:
    a: Host
    b: Host

    def kill_processes(self) -> None:
        self.a.kill_processes()
        self.b.kill_processes()

    def destroy(self) -> None:
        """Kill every process left in either namespace and delete both."""
        self.kill_processes()
        for host in (self.a, self.b):
            subprocess.run(["ip", "netns", "del", host.namespace], capture_output=True,
                           timeout=COMMAND_TIMEOUT)


def _ip(*argv: str) -> None:
    done = subprocess.run(["ip", *argv], capture_output=True, text=True,
                          timeout=COMMAND_TIMEOUT)
    if done.returncode:
        raise NamespacesUnavailable(f"`ip {' '.join(argv)}` failed: {done.stderr.strip()}")


def make_pair() -> HostPair:
    """Namespaces wb-TOKEN-a and -b, joined by a veth pair in 10.213.N.0/24 (N random; the
    namespaces keep the range from clashing with anything outside), lo up in both.
    NamespacesUnavailable says what is missing."""
    if os.geteuid() != 0:
        raise NamespacesUnavailable("network namespaces need root (`ip netns add`)")
    if shutil.which("ip") is None:
        raise NamespacesUnavailable("iproute2's `ip` command is missing (apt-get install "
                                    "iproute2)")
    token = uuid.uuid4().hex[:6]
    subnet = f"10.213.{random.randrange(256)}"
    pair = HostPair(Host(f"wb-{token}-a", f"wb{token}a", f"{subnet}.1"),
                    Host(f"wb-{token}-b", f"wb{token}b", f"{subnet}.2"))
    try:
        _ip("netns", "add", pair.a.namespace)
        _ip("netns", "add", pair.b.namespace)
        _ip("link", "add", pair.a.interface, "netns", pair.a.namespace, "type", "veth",
            "peer", "name", pair.b.interface, "netns", pair.b.namespace)
        for host in (pair.a, pair.b):
            _ip("-n", host.namespace, "address", "add", f"{host.address}/24", "dev",
                host.interface)
            _ip("-n", host.namespace, "link", "set", "lo", "up")
            _ip("-n", host.namespace, "link", "set", host.interface, "up")
        _ip("netns", "exec", pair.a.namespace, "true")  # entering one works here too
    except BaseException:
        pair.destroy()
        raise
    return pair
