"""Several brokers as one (``client.cluster``): each workspace lives whole on the broker its name
is placed on, so every NetWorkSpaces guarantee holds; the names spread evenly and a new broker
moves only its share (``rebalance`` moves them); a broker that is down fails what needs it,
naming it, and nothing else. Real broker processes throughout."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections import Counter

import pytest

from workbench import KeyValueStore, NetWorkSpace, NwsServer, Sleigh
from workbench.client.cluster import Member, members, place, spread
from workbench.client.migrate import rebalance
from workbench.errors import NwsConnectException, NwsMemoryException, NwsServerException
from workbench.jupyter.session import MagicSession

from .netns import ACROSS
from .support import start_broker

pytestmark = pytest.mark.timeout(90)


@pytest.fixture
def trio(tmp_path):
    brokers = [start_broker(tmp_path) for _ in range(3)]
    yield brokers
    for broker in brokers:
        broker.stop()


def _held(broker) -> set[str]:
    """The workspaces one broker holds, asked of it alone."""
    with NwsServer(broker.address) as alone:
        return set(alone.listWss(format="dict")) - {"__default"}


# ---------------------------------------------------------------------- placement


def test_names_spread_evenly_and_a_fourth_broker_takes_only_its_share():
    three = [Member(f"tcp://10.0.0.{i}:8765", f"tcp://10.0.0.{i}:8765") for i in (1, 2, 3)]
    four = [*three, Member("tcp://10.0.0.4:8765", "tcp://10.0.0.4:8765")]
    names = [f"workspace-{i}" for i in range(3000)]
    counts = Counter(place(three, name).name for name in names)
    assert all(abs(count - 1000) <= 100 for count in counts.values()), counts  # within 10 %
    moved = [name for name in names if place(three, name) != place(four, name)]
    assert 0.2 * len(names) <= len(moved) <= 0.3 * len(names)  # about a quarter
    assert {place(four, name) for name in moved} == {four[3]}  # all to the new broker
    assert spread(names, four)[four[3].name] == moved


def test_a_cluster_file_names_its_brokers(tmp_path):
    path = tmp_path / "cluster.json"
    path.write_text(json.dumps({"brokers": ["localhost:7001", {"name": "b",
                                                               "broker": "tcp://h:7002"}]}))
    assert members(str(path)) == [Member("tcp://localhost:7001", "localhost:7001"),
                                  Member("b", "tcp://h:7002")]
    with pytest.raises(ValueError, match="twice"):
        members(["localhost:7001", "tcp://localhost:7001"])


# ---------------------------------------------------------------------- workspaces


def test_each_workspace_lives_whole_on_its_broker(trio):
    cluster = [broker.address for broker in trio]
    names = [f"ws{i}" for i in range(30)]
    with NwsServer(cluster) as server:
        for i, name in enumerate(names):
            ws = server.openWs(name)
            for value in range(3):
                ws.store("v", f"{name}:{value}")
        listed = server.listWss(format="dict")
        assert set(names) <= set(listed) and list(listed).count("__default") == 1
        for broker in trio:  # every workspace on the broker it is placed on, nowhere else
            expected = {name for name in names
                        if place(members(cluster), name).target == broker.address}
            assert _held(broker) == expected
        for name in names:  # order holds: it is one broker's
            again = NetWorkSpace(name, server=server, useUse=True)
            assert [again.fetch("v") for _ in range(3)] == [f"{name}:{v}" for v in range(3)]
        made = {server.mktempWs("tmp_%d") for _ in range(10)}
        assert len(made) == 10
        for name in made:
            assert name in _held(next(broker for broker in trio if broker.address ==
                                      place(members(cluster), name).target))
        status = server.status()
        assert status["workspaces"] == sum(s["workspaces"] for s in status["brokers"].values())
        assert len(status["brokers"]) == 3


def test_a_fetch_blocks_until_another_process_stores_through_the_cluster(trio):
    cluster = [broker.address for broker in trio]
    ws = NetWorkSpace("meeting", cluster, useUse=True)
    try:
        got = []
        waiter = threading.Thread(target=lambda: got.append(ws.fetch("v", timeout=20)))
        waiter.start()
        time.sleep(0.3)
        code = (f"from workbench import NetWorkSpace\n"
                f"NetWorkSpace('meeting', {cluster!r}, useUse=True).store('v', 'from afar')\n")
        subprocess.run([sys.executable, "-c", code], check=True, timeout=30,
                       env={**os.environ, "PYTHONPATH": os.getcwd()})
        waiter.join(20)
        assert got == ["from afar"]
    finally:
        ws.close()


def test_a_broker_down_fails_only_what_it_holds_and_says_which(trio):
    cluster = [broker.address for broker in trio]
    names = [f"w{i}" for i in range(12)]
    down = trio[0]
    with NwsServer(cluster) as server:
        for name in names:
            server.useWs(name).store("v", 1)
    down.stop()
    with NwsServer(cluster) as server:
        for name in names:
            on_down = place(members(cluster), name).target == down.address
            if on_down:
                with pytest.raises(NwsServerException, match=down.address.split("//")[1]):
                    NetWorkSpace(name, server=server, useUse=True).fetch("v", timeout=5)
            else:  # never placed elsewhere: the others keep working
                assert NetWorkSpace(name, server=server, useUse=True).fetch("v") == 1
        with pytest.raises(NwsConnectException, match="does not answer"):
            server.listWss()  # needs every broker


# ---------------------------------------------------------------------- key-value


def test_key_value_entries_spread_by_key(trio):
    cluster = [broker.address for broker in trio]
    keys = [f"k{i}" for i in range(60)]
    with KeyValueStore(cluster) as store:
        assert store.set_multi({key: i for i, key in enumerate(keys)}) == []
        assert {key: entry.value for key, entry in store.get_multi(keys).items()} == {
            key: i for i, key in enumerate(keys)}
        assert store.incr("k1", 10) == 11
        entry = store.get("k2")
        assert store.store("k2", "new", how="cas", version=entry.version)[0] == 0
        assert store.delete_multi(keys[:5]) == 5
        assert store.stats()["values"] == len(keys) - 5
        for broker in trio:
            with KeyValueStore(broker.address) as alone:  # each holds its keys only
                held = {key for key in keys[5:] if alone.get(key) is not None}
                assert held == {key for key in keys[5:] if place(
                    members(cluster), key.encode()).target == broker.address}
                assert held


def test_the_wrpme_face_spreads_its_keys_too(trio):
    from workbench.hive import AliasAlreadyExists, Client

    cluster = [broker.address for broker in trio]
    with Client(cluster) as client:
        for i in range(30):
            client.put(f"alias{i}", {"n": i})
        with pytest.raises(AliasAlreadyExists):
            client.put("alias3", None)
        assert client.get("alias7") == {"n": 7}
    holding = 0
    for broker in trio:
        with Client(broker.host, broker.port) as alone:
            holding += sum(1 for i in range(30) if _has(alone, f"alias{i}"))
    assert holding == 30  # each key on one broker only


def _has(client, alias: str) -> bool:
    from workbench.hive import AliasNotFound

    try:
        client.get(alias)
        return True
    except AliasNotFound:
        return False


# ---------------------------------------------------------------------- sleigh and magics


def test_a_sleigh_on_a_cluster(trio):
    cluster = [broker.address for broker in trio]
    sleigh = Sleigh(2, broker=cluster)
    try:
        assert list(sleigh.map(pow, range(20), [2] * 20)) == [i ** 2 for i in range(20)]
        home = place(members(cluster), sleigh.wsName)
        assert place(members(cluster), sleigh.userNws.currentWs()) == home
        holder = next(broker for broker in trio if broker.address == home.target)
        assert {sleigh.wsName, sleigh.userNws.currentWs()} <= _held(holder)
    finally:
        sleigh.stop()


def test_the_magics_connect_to_a_cluster(trio):
    cluster = [broker.address for broker in trio]
    session = MagicSession()
    try:
        assert "a cluster of 3 brokers" in session.connect(cluster)
        session.select("notes", own=False).store("x", 42)
        with NwsServer(cluster) as server:
            assert NetWorkSpace("notes", server=server, useUse=True).fetch("x") == 42
        session.store().store("key", "value")
        with KeyValueStore(cluster) as store:
            assert store.get("key").value == "value"
    finally:
        session.close()


# ---------------------------------------------------------------------- growing the cluster


def test_rebalance_moves_what_a_fourth_broker_takes(trio, tmp_path):
    three = [broker.address for broker in trio]
    names = [f"data{i}" for i in range(40)]
    with NwsServer(three) as server:
        for i, name in enumerate(names):
            ws = server.useWs(name)
            ws.declare("queue", "fifo")
            ws.declare("stack", "lifo")
            for value in range(3):
                ws.store("queue", value)
                ws.store("stack", value)
    with KeyValueStore(three) as store:
        store.set_multi({f"key{i}": i for i in range(30)})
    fourth = start_broker(tmp_path)
    try:
        four = [*three, fourth.address]
        planned = rebalance(three, four, dry_run=True)
        moves = rebalance(three, four)
        moved = {move.workspace for move in moves if move.key is None and not move.skipped}
        assert moved == {name for name in names if place(members(four), name).target ==
                         fourth.address}
        assert [move[:3] for move in planned] == [move[:3] for move in moves]
        # A fourth broker takes about a quarter of all names: bounded over a thousand, since
        # the forty stored here (a quarter of them moved, give or take) fall outside any
        # useful bound once in a few hundred runs, the brokers' ports being random.
        taken = sum(place(members(four), f"name{i}").target == fourth.address
                    for i in range(1000))
        assert 150 <= taken <= 350 and moved
        assert _held(fourth) == moved | ({"kv"} if any(m.key for m in moves) else set())
        with NwsServer(four) as server:
            for name in names:  # order and modes kept: the newest still on top of a stack
                ws = NetWorkSpace(name, server=server, useUse=True)
                assert [ws.fetch("queue") for _ in range(3)] == [0, 1, 2]
                assert [ws.fetch("stack") for _ in range(3)] == [2, 1, 0]
                assert ws.listVars(format="dict")["stack"][4] == "lifo"
        with KeyValueStore(four) as store:
            assert {key: entry.value for key, entry in store.get_multi(
                [f"key{i}" for i in range(30)]).items()} == {f"key{i}": i for i in range(30)}
        assert rebalance(four, four) == []  # nothing left to move
    finally:
        fourth.stop()


def test_rebalance_knows_a_broker_by_its_address_whatever_its_name(trio, tmp_path):
    """Naming the brokers of a running cluster places names anew: what lands on another
    broker moves, and what lands on the same broker (reached at the same address, under its
    new name) stays, where a move onto itself would take and store its values forever."""
    plain = [broker.address for broker in trio]
    names = [f"keep{i}" for i in range(24)]
    with NwsServer(plain) as server:
        for i, name in enumerate(names):
            server.useWs(name).store("v", i)
    named = tmp_path / "named.json"
    named.write_text(json.dumps({"brokers": [{"name": f"b{i}", "broker": broker.address}
                                             for i, broker in enumerate(trio)]}))
    cluster = members(str(named))
    stays = [name for name in names
             if place(cluster, name).target == place(members(plain), name).target]
    assert stays  # some names land where they were: the case that must not loop
    moves = rebalance(plain, str(named))
    assert sorted(move.workspace for move in moves) == sorted(set(names) - set(stays))
    for broker in trio:
        assert _held(broker) == {name for name in names
                                 if place(cluster, name).target == broker.address}
    with NwsServer(str(named)) as server:
        assert [NetWorkSpace(name, server=server, useUse=True).fetchTry("v")
                for name in names] == list(range(24))
        assert all(NetWorkSpace(name, server=server, useUse=True).fetchTry("v") is None
                   for name in names)  # each value once


def test_a_move_the_new_broker_refuses_leaves_the_values_where_they_were(trio, tmp_path):
    """The new broker's memory cap refuses a workspace's values: rebalance fails saying so,
    and the old broker still holds every value, in order (nothing was acknowledged)."""
    three = [broker.address for broker in trio]
    small = start_broker(tmp_path, "--max-memory", "64K")
    try:
        four = [*three, small.address]
        name = next(f"big{i}" for i in range(1000)
                    if place(members(four), f"big{i}").target == small.address)
        with NwsServer(three) as server:
            ws = server.useWs(name)
            for i in range(8):
                ws.store("v", bytes([i]) * (20 << 10))
        with pytest.raises(NwsMemoryException):
            rebalance(three, four)
        with NwsServer(three) as server:
            ws = NetWorkSpace(name, server=server, useUse=True)
            assert [ws.fetchTry("v")[:1] for _ in range(8)] == [bytes([i]) for i in range(8)]
    finally:
        small.stop()


def test_the_key_value_faces_workspaces_move_as_their_faces_place_them():
    from workbench import hive, memcache
    from workbench.client.keyvalue import DEFAULT_KV_WORKSPACE
    from workbench.client.migrate import LEFT_ALONE, PLACED_BY_KEY

    assert {DEFAULT_KV_WORKSPACE, hive.DEFAULT_WORKSPACE} == set(PLACED_BY_KEY)
    assert memcache.DEFAULT_WORKSPACE in LEFT_ALONE


def test_three_brokers_hold_three_times_what_one_holds(tmp_path):
    def fill(cluster) -> int:
        stored, refused, index = 0, 0, 0
        with NwsServer(cluster) as server:
            while refused < 30:
                try:
                    server.useWs(f"fill{index}").store("v", b"x" * (32 << 10))
                    stored += 1
                    refused = 0
                except NwsMemoryException:
                    refused += 1
                index += 1
        return stored

    brokers = [start_broker(tmp_path, "--max-memory", "1M") for _ in range(3)]
    try:
        one = fill(brokers[0].address)
        for broker in brokers:  # empty again
            with NwsServer(broker.address) as alone:
                for name in alone.listWss(format="dict"):
                    if name.startswith("fill"):
                        alone.deleteWs(name)
        three = fill([broker.address for broker in brokers])
    finally:
        for broker in brokers:
            broker.stop()
    assert one >= 20
    assert three >= 2.7 * one, (one, three)


# ---------------------------------------------------------------------- across hosts


def test_a_cluster_across_two_network_namespaces(pair, tmp_path):
    """One broker on a second host (a network namespace): CURVE by default there, reached
    through its connection file, and it holds its share like the others."""
    brokers = []
    try:
        near, far = pair.a, pair.b
        brokers = [start_broker(tmp_path, "--host", near.address, *ACROSS, "--insecure",
                                within=near.command()) for _ in range(2)]
        brokers.append(start_broker(tmp_path, "--host", far.address, *ACROSS,
                                    "--connection-file", str(tmp_path / "far.json"),
                                    within=far.command()))
        cluster = [brokers[0].address, brokers[1].address, brokers[2].connection_file]
        assert brokers[2].connection_file  # off loopback: CURVE, keys in the file
        names = [f"far{i}" for i in range(30)]
        code = ("import sys, json\n"
                "from workbench import NwsServer, NetWorkSpace\n"
                f"cluster = {cluster!r}\n"
                "with NwsServer(cluster) as s:\n"
                f"    for n in {names!r}:\n"
                "        s.useWs(n).store('v', n)\n"
                f"    print(json.dumps([NetWorkSpace(n, server=s, useUse=True).fetch('v') "
                f"for n in {names!r}]))\n")
        done = subprocess.run(near.command(sys.executable, "-c", code), capture_output=True,
                              text=True, timeout=60,
                              env={**os.environ, "PYTHONPATH": os.getcwd()})
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout) == names
        on_far = [name for name in names if place(members(cluster), name).target == cluster[2]]
        assert on_far  # the far broker held (and gave back) its share
    finally:
        for broker in brokers:
            broker.stop()
        pair.kill_processes()


def test_workbench_status_of_a_cluster_file(trio, tmp_path):
    cluster = tmp_path / "cluster.json"
    cluster.write_text(json.dumps({"brokers": [broker.address for broker in trio]}))
    with NwsServer(str(cluster)) as server:
        for i in range(6):
            server.useWs(f"s{i}").store("v", i)
        done = subprocess.run([sys.executable, "-m", "workbench", "status", "--broker",
                               str(cluster), "--json"], capture_output=True, text=True,
                              timeout=60, env={**os.environ, "PYTHONPATH": os.getcwd()})
    assert done.returncode == 0, done.stderr
    info = json.loads(done.stdout)
    assert info["values"] == 6 and len(info["brokers"]) == 3
