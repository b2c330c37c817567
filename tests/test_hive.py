"""workbench.hive: wrpme's Client and RawClient on a real broker, checked against wrpme's
documented behaviour (and quasardb's first additions: get_update, compare_and_swap,
remove_all)."""

from __future__ import annotations

import gc
import io
import pickle
import signal
import socket
import threading

import pytest

from workbench import KeyValueStore, NetWorkSpace, hive
from workbench.errors import (
    NwsBadRequestException, NwsConnectException, NwsConnectionDroppedException, NwsException,
    NwsMemoryException, NwsMessageTooLargeException, NwsTimeoutException, NwsValueException,
)
from workbench.hive import (
    AliasAlreadyExists, AliasNotFound, Client, ConnectionRefused, ConnectionReset, HostNotFound,
    Internal, InvalidInput, NoMemory, RawClient, Timeout, WrpmeException,
)

from .support import start_broker, wait_for

#: (client class, a key, a value, another value) for the tests both clients must pass.
CASES = [
    pytest.param(RawClient, "alias", b"data", b"other", id="raw"),
    pytest.param(Client, ("alias", 1), {"data": [1, 2]}, {"other"}, id="pickled"),
]


@pytest.fixture
def connect(broker, ws_name):
    """Clients of the module's broker on a workspace of this test's own; closed afterwards."""
    made: list[RawClient] = []

    def make(cls: type[RawClient] = RawClient) -> RawClient:
        client = cls(broker.host, broker.port, workspace=ws_name)
        made.append(client)
        return client

    yield make
    for client in made:
        client.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---------------------------------------------------------------------- the checklist


@pytest.mark.parametrize("cls, key, value, other", CASES)
def test_put_refuses_an_existing_key_get_and_remove_refuse_a_missing_one(connect, cls, key,
                                                                         value, other):
    hive_ = connect(cls)
    with pytest.raises(AliasNotFound, match='^getting "'):
        hive_.get(key)
    hive_.put(key, value)
    assert hive_.get(key) == value
    with pytest.raises(AliasAlreadyExists, match='^putting "'):
        hive_.put(key, other)
    assert hive_.get(key) == value  # the refused put changed nothing
    hive_.remove(key)
    with pytest.raises(AliasNotFound, match='^removing "'):
        hive_.remove(key)
    with pytest.raises(AliasNotFound):
        hive_.get(key)


@pytest.mark.parametrize("cls, key, value, other", CASES)
def test_update_replaces_an_existing_entry_and_never_creates_one(connect, cls, key, value,
                                                                 other):
    hive_ = connect(cls)
    with pytest.raises(AliasNotFound, match='^updating "'):
        hive_.update(key, value)  # wrpme's semantics, not quasardb 1.2's upsert
    with pytest.raises(AliasNotFound):
        hive_.get(key)
    hive_.put(key, value)
    hive_.update(key, other)
    assert hive_.get(key) == other


@pytest.mark.parametrize("cls, key, value, other", CASES)
def test_get_update_and_compare_and_swap_return_the_old_value(connect, cls, key, value, other):
    hive_ = connect(cls)
    with pytest.raises(AliasNotFound, match='^getting and updating "'):
        hive_.get_update(key, value)
    with pytest.raises(AliasNotFound, match='^comparing and swapping "'):
        hive_.compare_and_swap(key, value, other)
    hive_.put(key, value)
    assert hive_.get_update(key, other) == value
    assert hive_.get(key) == other
    assert hive_.compare_and_swap(key, value, value) == other  # comparand differs: no swap
    assert hive_.get(key) == other
    assert hive_.compare_and_swap(key, value, other) == other  # equal: swapped
    assert hive_.get(key) == value


def test_compare_and_swap_compares_types_too(connect):
    raw = connect()
    raw.put("k", "text")
    assert raw.compare_and_swap("k", "new", b"text") == "text"
    assert raw.get("k") == "text"


@pytest.mark.parametrize("cls", [RawClient, Client])
def test_remove_all_empties_the_hive_and_only_it(connect, broker, ws_name, cls):
    hive_ = connect(cls)
    hive_.put("a", "1")
    hive_.put("b", "2")
    with RawClient(broker.host, broker.port, workspace=ws_name + "_other") as elsewhere:
        elsewhere.put("a", "kept")
        hive_.remove_all()
        assert elsewhere.get("a") == "kept"
        elsewhere.remove_all()
    for key in "ab":
        with pytest.raises(AliasNotFound):
            hive_.get(key)
    hive_.put("a", "again")
    assert hive_.get("a") == "again"


def test_client_pickles_keys_and_values_so_its_key_space_differs(connect, broker, ws_name):
    raw, pickled = connect(RawClient), connect(Client)
    raw.put("a", b"raw")
    with pytest.raises(AliasNotFound):
        pickled.get("a")
    pickled.put("a", b"pickled")
    assert raw.get("a") == b"raw" and pickled.get("a") == b"pickled"
    pickled.put(("any", 2, frozenset({3})), [None, 1.5])
    assert pickled.get(("any", 2, frozenset({3}))) == [None, 1.5]
    ws = NetWorkSpace(ws_name, broker.host, broker.port, useUse=True)
    names = ws.listVars(format="dict")
    assert "a" in names and len(names) == 3
    pickled_names = [name for name in names if name.startswith("pickle:")]
    assert len(pickled_names) == 2 and all(name.isprintable() for name in pickled_names)
    # NetWorkSpace readers unpickle Client values; RawClient hands back the pickles' bytes
    assert sorted(repr(ws.find(name)) for name in pickled_names) == ["[None, 1.5]", "b'pickled'"]
    assert sorted(repr(pickle.loads(raw.get(name))) for name in pickled_names) == [
        "[None, 1.5]", "b'pickled'"]
    ws.server.close()


def test_raw_values_keep_their_type_and_are_a_workspace_s_variables(connect, broker, ws_name):
    raw = connect()
    raw.put("bytes", b"\x00\xff")
    raw.put(b"text", "h\xe9")
    assert raw.get(b"bytes") == b"\x00\xff" and raw.get("text") == "h\xe9"
    ws = NetWorkSpace(ws_name, broker.host, broker.port, useUse=True)
    assert sorted(ws.listVars(format="dict")) == ["bytes", "text"]
    assert ws.find("text") == "h\xe9"
    ws.declare("stored", "single")
    ws.store("stored", {"by": "NetWorkSpace"})  # a pickle: RawClient hands back its bytes
    assert pickle.loads(raw.get("stored")) == {"by": "NetWorkSpace"}
    ws.server.close()


def test_raw_client_takes_str_or_bytes_and_nothing_empty(connect):
    raw = connect()
    for bad in (1, None, bytearray(b"x"), ("t",)):
        with pytest.raises(InvalidInput, match="RawClient takes str or bytes.*Client pickles"):
            raw.put(bad, b"v")
        with pytest.raises(InvalidInput, match="RawClient takes str or bytes.*Client pickles"):
            raw.put("k", bad)
    for empty in ("", b""):
        with pytest.raises(InvalidInput, match="empty"):
            raw.put(empty, b"v")
        with pytest.raises(InvalidInput, match="empty"):
            raw.put("k", empty)
        with pytest.raises(InvalidInput, match="empty"):
            raw.compare_and_swap("k", b"v", empty)
    with pytest.raises(InvalidInput, match="control characters"):
        raw.put("tab\there", b"v")  # the broker's rule for names
    with pytest.raises(InvalidInput, match="UTF-8"):
        raw.put(b"\xff", b"v")
    with pytest.raises(InvalidInput, match="key too long"):
        raw.put("k" * 1025, b"v")
    raw.put("k" * 1024, b"v")
    with pytest.raises(AliasNotFound):
        raw.get("k")  # none of the refused puts stored anything


def test_client_keys_and_values_are_any_picklable_object(connect):
    pickled = connect(Client)
    pickled.put("", "")  # their pickles are not empty
    assert pickled.get("") == ""
    pickled.put(None, 0)
    assert pickled.get(None) == 0
    with pytest.raises(InvalidInput, match="key too long"):
        pickled.put("k" * 800, 1)
    with pytest.raises(pickle.PicklingError):
        pickled.put(lambda: 1, 1)
    with pytest.raises(pickle.PicklingError):
        pickled.put("k", threading.Lock())
    with pytest.raises(pickle.PicklingError):
        pickled.get(lambda: 1)
    with pytest.raises(AliasNotFound):
        pickled.get("k")


def test_messages_name_the_operation_and_a_cut_alias(connect):
    raw, pickled = connect(RawClient), connect(Client)
    alias = "line\r\nbreak" + "x" * 200
    shown = 'getting "line  break' + "x" * 117 + '"'
    with pytest.raises(AliasNotFound) as info:
        pickled.get(alias)
    assert str(info.value) == shown
    with pytest.raises(InvalidInput) as info:
        raw.get(alias)  # not a valid name: the broker's explanation follows
    assert str(info.value).startswith(shown + ": ") and "control characters" in str(info.value)
    with pytest.raises(AliasNotFound) as info:
        pickled.remove(("a", 1))
    assert str(info.value) == "removing \"('a', 1)\""


def test_exceptions_share_one_base_and_match_the_builtins():
    names = ["System", "Internal", "NoMemory", "HostNotFound", "AliasNotFound",
             "AliasAlreadyExists", "Timeout", "InvalidInput", "ConnectionRefused",
             "ConnectionReset"]
    assert all(issubclass(getattr(hive, name), WrpmeException) for name in names)
    assert issubclass(Timeout, TimeoutError)
    assert issubclass(ConnectionRefused, ConnectionRefusedError)
    assert issubclass(ConnectionReset, ConnectionResetError)
    assert issubclass(HostNotFound, socket.gaierror)
    assert issubclass(InvalidInput, ValueError)
    assert not issubclass(NoMemory, MemoryError)


@pytest.mark.parametrize("nws, expected", [
    (NwsConnectException, ConnectionRefused), (NwsConnectionDroppedException, ConnectionReset),
    (NwsMemoryException, NoMemory), (NwsTimeoutException, Timeout),
    (NwsBadRequestException, InvalidInput), (NwsMessageTooLargeException, InvalidInput),
    (NwsValueException, Internal), (NwsException, Internal),
])
def test_broker_failures_map_to_wrpme_exceptions(nws, expected):
    mapped = hive._mapped(nws("why"), 'getting "k"')
    assert type(mapped) is expected and str(mapped) == 'getting "k": why'


# ---------------------------------------------------------------------- connections


def test_no_address_finds_the_broker_as_networkspace_does(broker, monkeypatch):
    monkeypatch.setenv("WORKBENCH_BROKER", broker.address)
    with Client() as pickled, RawClient() as raw:
        assert pickled.workspace == raw.workspace == "hive"
        raw.put("found", "yes")
        with RawClient(broker.host, broker.port) as explicit:
            assert explicit.get("found") == "yes"
        ws = NetWorkSpace("hive", useUse=True)
        assert "found" in ws.listVars(format="dict")
        ws.server.close()
        raw.remove_all()


def test_connection_failures_at_construction():
    with pytest.raises(ConnectionRefused, match="connecting to 127.0.0.1:") as info:
        RawClient("127.0.0.1", free_port(), timeout=0.3)
    assert isinstance(info.value, ConnectionRefusedError)
    with pytest.raises(HostNotFound, match="nosuch.invalid"):
        Client("nosuch.invalid")
    with pytest.raises(InvalidInput, match="IPv6"):
        RawClient("::1")


def test_memory_cap_raises_no_memory_and_stores_nothing(make_broker):
    broker = make_broker("--max-memory", "1M")
    with RawClient(broker.host, broker.port) as raw:
        raw.put("small", b"x" * 1000)
        with pytest.raises(NoMemory, match='^putting "big": .*--max-memory'):
            raw.put("big", b"x" * (2 << 20))
        with pytest.raises(AliasNotFound):
            raw.get("big")
        assert raw.get("small") == b"x" * 1000


def test_close_context_manager_and_destruction_disconnect(make_broker):
    # Its own broker, so no other test's session comes or goes; one that ends no session for
    # silence within this test (0.2 s x 100), so each disconnection seen is a goodbye, and a
    # heartbeat held up (gc.collect holds the GIL) does not end the watcher's session.
    broker = make_broker("--heartbeat-liveness", "100")
    with KeyValueStore(broker.host, broker.port) as watcher:
        def clients() -> int:
            return len(watcher.stats()["clients"])

        before = clients()
        with RawClient(broker.host, broker.port) as raw:
            assert clients() == before + 1
        wait_for(lambda: clients() == before, timeout=10)
        with pytest.raises(ConnectionReset, match="closed"):
            raw.get("k")
        pickled = Client(broker.host, broker.port)
        assert clients() == before + 1
        del pickled
        gc.collect()
        wait_for(lambda: clients() == before, timeout=10)


def test_a_dropped_connection_raises_connection_reset_then_is_made_again(make_broker):
    broker = make_broker()
    with Client(broker.host, broker.port, timeout=2) as pickled:
        pickled.put("k", 1)
        broker.process.send_signal(signal.SIGSTOP)  # silent: heartbeats go unanswered
        try:
            with pytest.raises(ConnectionReset, match='^getting "k": the broker') as info:
                pickled.get("k")
            assert isinstance(info.value, ConnectionResetError)
        finally:
            broker.process.send_signal(signal.SIGCONT)
        assert pickled.get("k") == 1  # a new connection to the same broker


def test_a_restarted_broker_on_the_same_port_is_found_again(tmp_path):
    port = free_port()
    broker = start_broker(tmp_path, "--port", str(port))
    try:
        raw = RawClient(broker.host, port, timeout=1)
        raw.put("k", b"before")
        broker.stop()
        with pytest.raises((ConnectionReset, ConnectionRefused)):
            raw.get("k")
        with pytest.raises(ConnectionRefused):  # still nothing there: tried again, refused
            raw.get("k")
        broker = start_broker(tmp_path, "--port", str(port))
        with pytest.raises(AliasNotFound):
            raw.get("k")  # a new broker: the entries went with the old one
        raw.put("k", b"after")
        assert raw.get("k") == b"after"
        raw.close()
    finally:
        broker.stop()


# ---------------------------------------------------------------------- as wrpme's users wrote


def test_example_client_save_and_load(broker, ws_name):
    """wrpme's example_client: a module saving and loading Python objects by name."""
    hive_ = Client(broker.host, broker.port, workspace=ws_name)

    def save(name, obj):
        try:
            hive_.put(name, obj)
        except AliasAlreadyExists:
            hive_.update(name, obj)

    def load(name, default=None):
        try:
            return hive_.get(name)
        except AliasNotFound:
            return default

    assert load("settings") is None
    save("settings", {"theme": "dark", "size": 12})
    save("settings", {"theme": "light", "size": 12})
    assert load("settings") == {"theme": "light", "size": 12}
    assert load(("scores", 2012), []) == []
    hive_.close()


def test_example_raw_client_upload_and_download_in_chunks(broker, ws_name):
    """wrpme's example_raw_client: a document store without a limit on the file size, each
    file kept as numbered chunks plus an entry holding their count."""
    chunk_size = 64 * 1024
    hive_ = RawClient(broker.host, broker.port, workspace=ws_name)

    def upload(name, stream):
        count = 0
        while chunk := stream.read(chunk_size):
            hive_.put(f"{name}:{count}", chunk)
            count += 1
        hive_.put(name, str(count))

    def download(name, stream):
        for index in range(int(hive_.get(name))):
            stream.write(hive_.get(f"{name}:{index}"))

    document = bytes(range(256)) * 1000 + b"tail"  # 4 chunks, the last one short
    upload("report.pdf", io.BytesIO(document))
    copy = io.BytesIO()
    download("report.pdf", copy)
    assert copy.getvalue() == document
    with pytest.raises(AliasAlreadyExists):
        upload("report.pdf", io.BytesIO(b"again"))
    hive_.close()
