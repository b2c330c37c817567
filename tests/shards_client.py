"""Run by tests/test_shards.py inside a second network namespace: ``Shards`` over two gateways
of this namespace (on its loopback) and one across the veth pair, reached by its web
connection file. Prints what it saw as one line of JSON.

    python shards_client.py up|down NEAR1 NEAR2 FAR_FILE FAR_URL WS
"""

from __future__ import annotations

import json
import os
import sys

from workbench.errors import HostUnreachableError, ResponseError
from workbench.shards import Resource, Shards


def layout(near1: str, near2: str, far: str) -> Shards:
    """Each key on two of the three hosts; "far" only on the far one."""
    return Shards(limit=1, **{near1: ["red", "green"], near2: ["green", "blue"],
                              far: ["blue", "red", "far"]})


def values_held(shards: Shards, ws: str) -> list[dict]:
    """Per host, in host order: variable -> values held in ``ws``."""
    answers = shards.resources.broadcast("GET", f"/api/workspaces/{ws}/vars")
    return [{var: row["values"] for var, row in answer().items()} for answer in answers]


def up(shards: Shards, far_file: str, far_url: str, ws: str) -> dict:
    report: dict = {"namespace": os.readlink("/proc/self/ns/net")}
    report["far_version"] = Resource(far_file).get("/api/status")["version"]
    try:
        Resource(far_url).get("/api/status")  # the address alone, without the token
    except ResponseError as exc:
        report["without_token"] = exc.status
    created = shards.resources.broadcast("PUT", f"/api/workspaces/{ws}")
    report["created"] = [answer.status for answer in created]
    reached = shards.multicast(["blue", "red"], "POST", f"/api/workspaces/{ws}/vars/m", "v")
    report["multicast"] = [answer.request_line for answer in reached]
    shards.unicast("far", "POST", f"/api/workspaces/{ws}/vars/u", "v")
    report["held"] = values_held(shards, ws)
    return report


def down(shards: Shards, ws: str) -> dict:
    """The far gateway and its broker are stopped (its connection file went with it)."""
    report: dict = {}
    answers = [shards.unicast("red", "GET", f"/api/workspaces/{ws}/vars") for _ in range(5)]
    report["unicast"] = [answer.request_line for answer in answers]
    for name, send in (("broadcast", lambda: shards.broadcast("red", "GET", "/api/status")),
                       ("multicast", lambda: shards.multicast(["blue", "red"], "GET",
                                                              "/api/status"))):
        try:
            send()
        except HostUnreachableError as exc:
            report[name] = str(exc)
    return report


def main(phase: str, near1: str, near2: str, far_file: str, far_url: str, ws: str) -> None:
    shards = layout(near1, near2, far_file)
    try:
        report = up(shards, far_file, far_url, ws) if phase == "up" else down(shards, ws)
    finally:
        shards.close()
    print(json.dumps(report))


if __name__ == "__main__":
    main(*sys.argv[1:])
