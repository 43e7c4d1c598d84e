"""Two network namespaces joined by a veth pair: two "machines" on one, for the multi-node test and
benchmark. Needs root and Debian's iproute2; `namespaces_unavailable()` says why not otherwise."""

import json
import os
import shutil
import subprocess
import uuid


class Namespaces:
    """Two network namespaces joined by a veth pair, each node's only route to the other."""

    def __init__(self) -> None:
        tag = uuid.uuid4().hex[:6]
        self.names = [f"alexnet-{tag}-{n}" for n in range(2)]
        self.links = [f"ax{tag}{n}" for n in range(2)]
        self.addresses = ["10.231.77.1", "10.231.77.2"]

    def up(self) -> None:
        for name in self.names:
            ip("netns", "add", name)
        ip("link", "add", self.links[0], "netns", self.names[0], "type", "veth", "peer", "name", self.links[1],
           "netns", self.names[1])
        for name, link, address in zip(self.names, self.links, self.addresses):
            ip("-n", name, "addr", "add", f"{address}/30", "dev", link)
            ip("-n", name, "link", "set", link, "up")
            ip("-n", name, "link", "set", "lo", "up")

    def down(self) -> None:
        for name in self.names:
            subprocess.run(["ip", "netns", "del", name], capture_output=True)

    def run_in(self, n: int, cmd: list[str]) -> list[str]:
        return ["ip", "netns", "exec", self.names[n], *cmd]

    def sent_bytes(self, n: int) -> int:
        """Bytes node n has sent through its veth."""
        stats = subprocess.run(["ip", "-n", self.names[n], "-s", "-j", "link", "show", "dev", self.links[n]],
                               check=True, capture_output=True, text=True).stdout
        return json.loads(stats)[0]["stats64"]["tx"]["bytes"]


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True)


def namespaces_unavailable() -> str:
    """Why network namespaces cannot be made here, or "" when they can."""
    if shutil.which("ip") is None:
        return "no `ip` command (Debian's iproute2)"
    if os.geteuid() != 0:
        return "network namespaces need root"
    probe = f"alexnet-probe-{uuid.uuid4().hex[:6]}"
    made = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if made.returncode:
        return f"`ip netns add` refused: {made.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return ""
