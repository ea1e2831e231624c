"""A private bridge and network namespaces: the scale test's "hosts" on one machine.

Only what this module creates is touched: one bridge (``rst-br0``) holding the
first address of ``SUBNET`` (default ``10.77.0.0/24``; ``RELAY_SCALE_SUBNET=10.78.0``
picks another), and per host a namespace ``rst-<name>`` joined to the bridge by a veth
pair (``rst-<name>-h`` on the bridge, ``rst-<name>-n`` inside). No routes, no NAT:
hosts reach only the bridge's address, where the test's PostgreSQL and PgBouncer
listen. :meth:`Network.close` removes everything, whatever state it is in.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from dataclasses import dataclass

SUBNET = os.environ.get("RELAY_SCALE_SUBNET", "10.77.0")
BRIDGE = "rst-br0"
PREFIX = "rst-"


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run ``ip args``; raise with its message when it fails (``check``)."""
    done = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if check and done.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)} failed: {done.stderr.strip()}")
    return done


def unavailable() -> str | None:
    """Why namespaces cannot be made here (not root, no ``ip netns``), or None."""
    if os.geteuid() != 0:
        return "the scale test makes network namespaces and a bridge: run it as root"
    probe = f"{PREFIX}probe-{os.getpid()}"
    try:
        ip("netns", "add", probe)
    except (RuntimeError, FileNotFoundError) as exc:
        return f"ip netns does not work here: {exc}"
    ip("netns", "del", probe, check=False)
    existing = ip("-br", "addr").stdout
    if f" {SUBNET}." in existing or f"{BRIDGE} " in existing:
        return (
            f"{SUBNET}.0/24 or {BRIDGE} is in use already (another scale test running?); "
            "RELAY_SCALE_SUBNET picks another subnet"
        )
    return None


@dataclass
class Host:
    """One namespace on the bridge."""

    name: str
    address: str

    @property
    def netns(self) -> str:
        return f"{PREFIX}{self.name}"

    @property
    def veth(self) -> str:
        """The bridge-side end of its link (``ip link set ... down`` cuts the host off)."""
        return f"{PREFIX}{self.name}-h"

    def command(self, *argv: str) -> list[str]:
        """``argv`` run inside this host's namespace."""
        return ["ip", "netns", "exec", self.netns, *argv]

    def cut(self) -> None:
        """Take the host's link down: packets to and from it are dropped from now on."""
        ip("link", "set", self.veth, "down")

    def restore(self) -> None:
        ip("link", "set", self.veth, "up")


class Network:
    """The bridge and the hosts added to it; a context manager that removes them all."""

    def __init__(self) -> None:
        self.gateway = f"{SUBNET}.1"
        self.hosts: dict[str, Host] = {}
        self._created_bridge = False
        ip("link", "add", BRIDGE, "type", "bridge")
        self._created_bridge = True
        try:
            ip("addr", "add", f"{self.gateway}/24", "dev", BRIDGE)
            ip("link", "set", BRIDGE, "up")
        except BaseException:
            self.close()
            raise

    def add(self, name: str) -> Host:
        """A new namespace ``name`` (short: interface names hold 15 characters)."""
        host = Host(name, f"{SUBNET}.{10 + len(self.hosts)}")
        inner = f"{PREFIX}{name}-n"
        ip("netns", "add", host.netns)
        self.hosts[name] = host  # from here on, close() removes it
        ip("link", "add", host.veth, "type", "veth", "peer", "name", inner)
        ip("link", "set", host.veth, "master", BRIDGE)
        ip("link", "set", host.veth, "up")
        ip("link", "set", inner, "netns", host.netns)
        ip("netns", "exec", host.netns, "ip", "addr", "add", f"{host.address}/24", "dev", inner)
        ip("netns", "exec", host.netns, "ip", "link", "set", inner, "up")
        ip("netns", "exec", host.netns, "ip", "link", "set", "lo", "up")
        return host

    def close(self) -> None:
        """Delete every namespace (their veth pairs go with them) and the bridge."""
        for host in self.hosts.values():
            ip("netns", "del", host.netns, check=False)
            # A veth whose namespace still had processes survives: delete it by name.
            ip("link", "del", host.veth, check=False)
        self.hosts.clear()
        if self._created_bridge:
            ip("link", "del", BRIDGE, check=False)
            self._created_bridge = False

    def __enter__(self) -> Network:
        return self

    def __exit__(self, *exc: object) -> None:
        with contextlib.suppress(Exception):
            self.close()
