"""The NetWorkSpaces client against a real broker: every method of ``nws.client``, its modes,
blocking, iterators, files, listings, timeouts and cancellation."""

from __future__ import annotations

import io
import sys
import threading
import time

import numpy as np
import pytest

import workbench
from workbench import (
    DICT, NetWorkSpace, NwsConnectException, NwsDeclarationFailedException, NwsException,
    NwsIteratorInvalidException, NwsNoWorkSpaceException, NwsOperationException, NwsServer,
    NwsTimeoutException, NwsValueIterator, NwsVariableDeletedException,
)
from workbench.client import interrupts

from .support import wait_for


def in_thread(fn, *args):
    """Run ``fn`` in a thread; returns (thread, box) where box gets 'value' or 'error'."""
    box: dict = {}

    def run():
        try:
            box["value"] = fn(*args)
        except BaseException as exc:  # noqa: BLE001 - the test inspects it
            box["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, box


def waiting(ws, var, fetchers=0, finders=0):
    """Wait until the broker shows the given numbers of blocked callers on ``var``."""
    def check():
        row = ws.listVars(format=DICT).get(var)
        return row is not None and row[2] == fetchers and row[3] == finders
    wait_for(check, message=f"{var} never had {fetchers} fetchers and {finders} finders")


def test_store_fetch_keeps_python_types(ws):
    values = [42, 3.5, "text", b"raw\x00bytes", None, {"a": [1, (2, 3)]}, {1, 2},
              "é" * 70000, b"x" * 200000]
    for value in values:
        ws.store("v", value)
    assert [ws.fetch("v") for _ in values] == values


def test_closures_and_lambdas_travel(ws):
    offset = 10
    ws.store("f", lambda x: x + offset)
    assert ws.fetch("f")(5) == 15


def test_numpy_arrays_arrive_intact_and_writable(ws):
    array = np.arange(2_000_000, dtype=np.float64).reshape(1000, 2000)
    ws.store("a", array)
    got = ws.fetch("a")
    assert got.dtype == array.dtype and got.shape == array.shape
    assert np.array_equal(got, array)
    got[0, 0] = -1  # a received array is writable, as any array a user makes
    assert got[0, 0] == -1


def test_strings_and_bytes_travel_raw_for_any_client(ws):
    ws.store("s", "plain text")
    ws.store("b", b"\x00\x01")
    out = io.BytesIO()
    assert ws.fetchFile("s", out) == len(b"plain text")
    assert out.getvalue() == b"plain text"
    out = io.BytesIO()
    ws.fetchFile("b", out)
    assert out.getvalue() == b"\x00\x01"


def test_fifo_is_the_default_and_lifo_reverses(ws):
    for i in range(5):
        ws.store("q", i)
    assert [ws.fetch("q") for _ in range(5)] == [0, 1, 2, 3, 4]
    ws.declare("stack", "lifo")
    for i in range(5):
        ws.store("stack", i)
    assert [ws.fetch("stack") for _ in range(5)] == [4, 3, 2, 1, 0]


def test_multi_returns_every_value_once_in_random_order(ws):
    ws.declare("m", "multi")
    orders = []
    for _ in range(3):
        for i in range(30):
            ws.store("m", i)
        orders.append([ws.fetch("m") for _ in range(30)])
    for order in orders:
        assert sorted(order) == list(range(30))
    assert any(order != list(range(30)) and order != list(range(29, -1, -1))
               for order in orders)
    assert len({tuple(order) for order in orders}) > 1


def test_single_keeps_only_the_last_store(ws):
    ws.declare("s", "single")
    ws.store("s", 1)
    ws.store("s", 2)
    assert ws.listVars(format=DICT)["s"][workbench.V_VALUES] == 1
    assert ws.find("s") == 2
    assert ws.fetch("s") == 2
    assert ws.fetchTry("s", "none") == "none"


def test_a_mode_cannot_change(ws):
    ws.store("x", 1)  # a store makes a fifo variable
    ws.declare("x", "fifo")
    with pytest.raises(NwsDeclarationFailedException, match="already declared fifo"):
        ws.declare("x", "lifo")
    with pytest.raises(NwsOperationException, match="unknown mode"):
        ws.declare("y", "sideways")


def test_fetch_blocks_until_a_store(ws, other):
    thread, box = in_thread(ws.fetch, "late")
    waiting(ws, "late", fetchers=1)
    other.store("late", "here")
    thread.join(5)
    assert box == {"value": "here"}


def test_waiting_fetchers_are_served_in_arrival_order_each_value_once(ws, other):
    results = []
    threads = []
    for i in range(3):
        thread, box = in_thread(ws.fetch, "order")
        threads.append((i, thread, box))
        waiting(ws, "order", fetchers=i + 1)
    for value in ("a", "b", "c"):
        other.store("order", value)
    for i, thread, box in threads:
        thread.join(5)
        results.append((i, box["value"]))
    assert results == [(0, "a"), (1, "b"), (2, "c")]
    assert ws.listVars(format=DICT)["order"][1:4] == (0, 0, 0)


def test_every_waiting_finder_sees_the_value(ws, other):
    finders = [in_thread(ws.find, "seen") for _ in range(3)]
    waiting(ws, "seen", finders=3)
    other.store("seen", 7)
    for thread, box in finders:
        thread.join(5)
        assert box == {"value": 7}
    assert ws.fetch("seen") == 7  # finding does not consume


def test_find_and_try_variants(ws):
    assert ws.findTry("nothing") is None
    assert ws.fetchTry("nothing", missing="default") == "default"
    ws.store("x", 1)
    assert ws.findTry("x") == 1
    assert ws.find("x") == 1
    assert ws.fetchTry("x") == 1
    assert ws.fetchTry("x", 0) == 0


def test_delete_var_destroys_values_and_aborts_blocked_calls(ws, other):
    ws.store("gone", 1)
    ws.deleteVar("gone")
    assert "gone" not in ws.listVars(format=DICT)
    thread, box = in_thread(ws.fetch, "gone")
    waiting(ws, "gone", fetchers=1)
    other.deleteVar("gone")
    thread.join(5)
    assert isinstance(box["error"], NwsVariableDeletedException)


def test_list_vars_formats(ws):
    ws.store("b", 1)
    ws.store("b", 2)
    ws.declare("a", "lifo")
    listing = ws.listVars()
    assert listing == "a\t0\t0\t0\tlifo\nb\t2\t0\t0\tfifo"
    table = ws.listVars(format=DICT)
    assert table["b"] == ("b", 2, 0, 0, "fifo")
    assert table["a"][workbench.V_MODE] == "lifo"
    assert ws.currentWs() == ws.current_ws()


def test_list_wss_marks_what_this_session_owns(server, broker, ws_name):
    mine = server.openWs(ws_name)
    mine.store("v", 1)
    other_server = NwsServer(broker.host, broker.port)
    try:
        line = next(line for line in other_server.listWss().splitlines()
                    if line[1:].startswith(ws_name + "\t"))
        assert line.startswith(" ")
        mine_line = next(line for line in server.listWss().splitlines()
                         if line[1:].startswith(ws_name + "\t"))
        name, owner, persistent, nvars, names = mine_line[1:].split("\t")
        assert mine_line[0] == ">" and (persistent, nvars, names) == ("False", "1", "v")
        assert f"({__import__('os').getpid()})" in owner
        row = server.listWss(format=DICT)[ws_name]
        assert row[workbench.WS_MINE] is True and row[workbench.WS_VARLIST] == ["v"]
        assert other_server.listWss(format=DICT)[ws_name][workbench.WS_MINE] is False
    finally:
        other_server.close()


def test_use_never_takes_ownership_open_does(broker, ws_name):
    user = NwsServer(broker.host, broker.port)
    opener = NwsServer(broker.host, broker.port)
    try:
        user.useWs(ws_name)
        assert user.listWss(format=DICT)[ws_name][workbench.WS_MINE] is False
        opener.openWs(ws_name)
        assert opener.listWss(format=DICT)[ws_name][workbench.WS_MINE] is True
        user.openWs(ws_name)  # already owned: stays the first opener's
        assert user.listWss(format=DICT)[ws_name][workbench.WS_MINE] is False
    finally:
        user.close()
        opener.close()


def test_create_false_refuses_missing_workspaces(server, ws_name):
    with pytest.raises(NwsNoWorkSpaceException):
        server.openWs(ws_name, create=False)
    with pytest.raises(NwsNoWorkSpaceException):
        NetWorkSpace(ws_name, useUse=True, server=server, create=False)
    server.useWs(ws_name)
    assert server.openWs(ws_name, create=False).currentWs() == ws_name


def test_mktemp_and_delete_ws(server):
    name = server.mktempWs("tmp_%04d")
    assert name.startswith("tmp_") and name[4:].isdigit()
    assert server.mktempWs("tmp_%04d") != name
    assert server.listWss(format=DICT)[name][workbench.WS_OWNER] == ""
    space = server.openWs(name)
    space.store("x", 1)
    server.deleteWs(name)
    assert name not in server.listWss(format=DICT)
    with pytest.raises(NwsNoWorkSpaceException):
        space.store("x", 2)
    with pytest.raises(NwsOperationException, match="exactly one integer"):
        server.mktempWs("no_number")


def test_delete_ws_aborts_blocked_callers(ws, server, other):
    thread, box = in_thread(other.fetch, "v")
    waiting(ws, "v", fetchers=1)
    server.deleteWs(ws.currentWs())
    thread.join(5)
    assert isinstance(box["error"], NwsNoWorkSpaceException)


def test_ifind_never_repeats_and_blocks_at_the_end(ws, other):
    for i in range(3):
        ws.store("log", i)
    it = ws.ifind("log")
    assert [next(it) for _ in range(3)] == [0, 1, 2]
    thread, box = in_thread(next, it)
    waiting(ws, "log", finders=1)
    other.store("log", 3)
    thread.join(5)
    assert box == {"value": 3}
    assert ws.listVars(format=DICT)["log"][1] == 4  # finding consumed nothing


def test_ifind_try_stops_and_restart_continues(ws):
    for i in range(3):
        ws.store("log", i)
    it = ws.ifindTry("log")
    assert isinstance(it, NwsValueIterator)
    assert list(it) == [0, 1, 2]
    ws.store("log", 3)
    assert list(it) == []  # stays stopped until restart()
    it.restart()
    assert list(it) == [3]
    it.reset()
    assert list(it) == [0, 1, 2, 3]


def test_ifind_sees_past_fetched_values(ws):
    for i in range(4):
        ws.store("log", i)
    it = ws.ifindTry("log")
    assert next(it) == 0
    assert ws.fetch("log") == 0
    assert ws.fetch("log") == 1
    assert list(it) == [2, 3]


def test_ifetch_iterators(ws):
    for i in range(3):
        ws.store("jobs", i)
    assert list(ws.ifetchTry("jobs")) == [0, 1, 2]
    assert ws.fetchTry("jobs") is None
    ws.store("jobs", "x")
    assert next(ws.ifetch("jobs")) == "x"


def test_iterators_refuse_lifo_and_detect_recreated_variables(ws):
    ws.declare("stack", "lifo")
    ws.store("stack", 1)
    with pytest.raises(NwsOperationException, match="fifo or single"):
        next(ws.ifind("stack"))
    ws.store("v", 1)
    it = ws.ifindTry("v", raise_on_delete=True)
    assert next(it) == 1
    ws.deleteVar("v")
    ws.store("v", 2)
    with pytest.raises(NwsIteratorInvalidException, match="reset"):
        next(it)
    it.reset()
    assert list(it) == [2]


def test_write_to_and_file_methods(ws, tmp_path):
    source = tmp_path / "in.bin"
    source.write_bytes(b"0123456789")
    with open(source, "rb") as f:
        assert ws.storeFile("chunks", f, 4) == 4
        assert ws.storeFile("chunks", f, 4) == 4
        assert ws.storeFile("chunks", f) == 2
        assert ws.storeFile("chunks", f) == 0  # end of file: nothing stored
    assert ws.listVars(format=DICT)["chunks"][1] == 3
    out = io.BytesIO()
    it = ws.ifindTry("chunks")
    while it.writeTo(out):
        pass
    assert out.getvalue() == b"0123456789"
    out = io.BytesIO()
    assert ws.findFile("chunks", out) == 4 and out.getvalue() == b"0123"
    assert ws.findTryFile("chunks", io.BytesIO()) == 4
    assert ws.fetchTryFile("chunks", io.BytesIO()) == 4
    text = io.StringIO()
    assert ws.fetchFile("chunks", text) == 4 and text.getvalue() == "4567"
    assert ws.fetchTryFile("chunks", io.BytesIO()) == 2
    assert ws.fetchTryFile("chunks", io.BytesIO()) == 0


def test_timeout_raises_timeout_error_and_cancels(ws):
    started = time.monotonic()
    with pytest.raises(TimeoutError) as caught:
        ws.fetch("never", timeout=0.3)
    assert isinstance(caught.value, NwsTimeoutException)
    assert 0.3 <= time.monotonic() - started < 2
    assert ws.listVars(format=DICT)["never"][2] == 0  # the broker forgot the fetcher
    ws.store("never", "kept")  # not swallowed by the cancelled fetch
    assert ws.fetch("never", timeout=5) == "kept"
    with pytest.raises(TimeoutError):
        ws.find("never2", timeout=0.1)
    with pytest.raises(TimeoutError):
        next(ws.ifind("never3", timeout=0.1))


def test_ctrl_c_cancels_a_blocked_fetch_and_loses_nothing(ws, other):
    """KeyboardInterrupt (as a notebook's interrupt raises it) while fetch blocks."""
    timer = threading.Timer(0.3, __import__("_thread").interrupt_main)
    timer.start()
    with pytest.raises(KeyboardInterrupt):
        ws.fetch("interrupted", timeout=10)
    waiting(ws, "interrupted", fetchers=0)
    other.store("interrupted", 1)
    assert ws.fetch("interrupted", timeout=5) == 1
    assert ws.fetchTry("interrupted") is None


def _through_the_python_send(dealer) -> None:
    """Have the next small request take ``Dealer.send``, not the compiled fast lane (which
    runs no signal handler while it sends, so a Ctrl-C never lands inside its send)."""
    dealer.fast_lane = lambda: None


def test_ctrl_c_as_the_request_goes_out_withdraws_it(ws, other):
    """An interrupt that comes during the send surfaces once the request is out (a message
    is never cut in half): the fetch must still be withdrawn, or the value it takes stays
    leased to a reply nobody reads, and the next fetch waits for ever."""
    other.store("just-sent", 1)
    dealer = ws._connection.channel().dealer
    real_send = dealer.send

    def send_then_interrupt(frames, alive=None):
        went_out = real_send(frames, alive)
        del dealer.send, dealer.fast_lane  # once
        interrupts.hold(KeyboardInterrupt())  # as a Ctrl-C the send held back
        return went_out

    _through_the_python_send(dealer)
    dealer.send = send_then_interrupt
    with pytest.raises(KeyboardInterrupt):
        ws.fetch("just-sent", timeout=10)
    assert ws.fetch("just-sent", timeout=5) == 1
    assert ws.fetchTry("just-sent") is None


def _interrupt_before_the_next_send(ws) -> None:
    """The next request of ``ws``'s thread meets a Ctrl-C before its first byte goes out:
    the dealer drops it and holds the interrupt, as ``Dealer.send`` does."""
    dealer = ws._connection.channel().dealer

    def interrupted(frames, alive=None):
        del dealer.send, dealer.fast_lane  # once
        interrupts.hold(KeyboardInterrupt())
        return False

    _through_the_python_send(dealer)
    dealer.send = interrupted


def test_ctrl_c_before_the_request_goes_out_drops_it(ws):
    _interrupt_before_the_next_send(ws)
    with pytest.raises(KeyboardInterrupt):
        ws.store("unsent", 1)
    assert not interrupts.held()
    assert ws.fetchTry("unsent") is None  # never stored; and the channel is in step
    ws.store("sent", 2)
    assert ws.fetch("sent", timeout=5) == 2


def test_acknowledgements_a_dropped_request_carried_go_with_the_next(broker, ws_name, other):
    """A fetched value is acknowledged with the next request; when that request is dropped
    by Ctrl-C, the acknowledgement must not be lost with it, or the value would come back
    when the session ends."""
    ws = NetWorkSpace(ws_name, broker.host, broker.port, useUse=True)
    try:
        other.store("taken", "once")
        assert ws.fetch("taken", timeout=5) == "once"
        _interrupt_before_the_next_send(ws)
        with pytest.raises(KeyboardInterrupt):
            ws.store("unsent", 1)
    finally:
        ws.close()
    assert other.fetchTry("taken") is None


def test_server_status_lists_this_session_and_watch_follows_every_workspace(server, ws):
    info = server.status(timeout=5)
    assert info["version"] == workbench.__version__
    assert server.label in [client["label"] for client in info["clients"]]
    with server.watch() as watch:
        ws.store("watched", 1)
        events = []
        wait_for(lambda: events.extend(watch.next_batch(timeout=5)) or any(
            event["ws"] == ws.currentWs() and event.get("var") == "watched"
            for event in events))


def test_value_racing_a_cancel_goes_back(ws, other):
    """A value handed over just as the fetch is cancelled is put back, not lost."""
    connection = ws._connection
    channel = connection.channel()
    request_id = channel.send(workbench.protocol.Op.FETCH, [ws._wsb, b"race"])
    waiting(ws, "race", fetchers=1)
    other.store("race", "survivor")
    wait_for(lambda: ws.listVars(format=DICT)["race"][2] == 0)  # handed to our fetch
    channel.cancel(request_id, connection.check_alive)  # ...which we never read
    assert other.fetch("race", timeout=5) == "survivor"


def test_many_requests_in_flight_on_one_connection(ws):
    from workbench.codec import decode
    from workbench.protocol import Op

    connection = ws._connection
    channel = connection.channel()
    blocked = channel.send(Op.FETCH, [ws._wsb, b"later"])
    stores = [channel.send(Op.STORE, [ws._wsb, b"p"], workbench.codec.encode(i))
              for i in range(50)]
    fetches = [channel.send(Op.FETCH, [ws._wsb, b"p"]) for _ in range(50)]
    feeder = channel.send(Op.STORE, [ws._wsb, b"later"], workbench.codec.encode("done"))
    values = []
    for request_id in reversed(fetches):  # collect replies in another order than sent
        head, extra = channel.receive(request_id, time.monotonic() + 5, connection.check_alive)
        values.append(decode([memoryview(head)[24:], *extra]))
        channel.acks.append(request_id)
    for request_id in [*stores, feeder, blocked]:
        head, _ = channel.receive(request_id, time.monotonic() + 5, connection.check_alive)
        assert head[1] == 0
    assert sorted(values) == list(range(50))


def test_threads_share_a_connection(ws):
    def worker(n):
        for i in range(50):
            ws.store(f"t{n}", i)
        return [ws.fetch(f"t{n}") for _ in range(50)]

    threads = [in_thread(worker, n) for n in range(4)]
    for thread, box in threads:
        thread.join(20)
        assert box["value"] == list(range(50))


def test_finished_threads_leave_no_sockets_behind(ws):
    for _ in range(5):
        thread, box = in_thread(ws.store, "t", 1)
        thread.join(5)
        assert box == {"value": None}
    ws.store("t", 2)  # a new channel is made here only if this thread had none yet
    in_thread(ws.store, "t", 3)[0].join(5)
    assert len(ws._connection._channels) <= 3  # this thread's, at most the last two threads'
    assert ws.listVars(format=DICT)["t"][1] == 7


def test_pep8_names_are_the_same_functions():
    pairs = {
        NetWorkSpace: [("fetchTry", "fetch_try"), ("findTry", "find_try"),
                       ("deleteVar", "delete_var"), ("listVars", "list_vars"),
                       ("currentWs", "current_ws"), ("storeFile", "store_file"),
                       ("fetchFile", "fetch_file"), ("fetchTryFile", "fetch_try_file"),
                       ("findFile", "find_file"), ("findTryFile", "find_try_file"),
                       ("ifetchTry", "ifetch_try"), ("ifindTry", "ifind_try")],
        NwsServer: [("openWs", "open_ws"), ("useWs", "use_ws"), ("deleteWs", "delete_ws"),
                    ("mktempWs", "mktemp_ws"), ("listWss", "list_wss")],
        NwsValueIterator: [("writeTo", "write_to"), ("__next__", "next")],
    }
    for cls, names in pairs.items():
        for seed_name, pep8_name in names:
            assert getattr(cls, seed_name) is getattr(cls, pep8_name), (cls, pep8_name)


def test_unreachable_explicit_address_says_how_to_start_a_broker():
    started = time.monotonic()
    with pytest.raises(NwsConnectException, match="workbench broker --host 127.0.0.1 --port 9"):
        NetWorkSpace("x", "127.0.0.1", 9, timeout=0.5)
    assert time.monotonic() - started < 3


def test_a_curve_broker_tells_a_client_with_only_its_address_to_use_the_file(make_broker):
    """The broker hangs up at once, after saying why: that is what the client reports, not a
    broker that never answered."""
    broker = make_broker("--curve")
    started = time.monotonic()
    with pytest.raises(NwsConnectException, match="requires CURVE.*its connection file"):
        NetWorkSpace("x", broker.address, timeout=5)
    assert time.monotonic() - started < 3


def test_closing_purges_owned_workspaces(broker, ws_name):
    owner = NwsServer(broker.host, broker.port)
    watcher = NwsServer(broker.host, broker.port)
    try:
        owner.openWs(ws_name).store("x", 1)
        waiter = watcher.useWs(ws_name)
        thread, box = in_thread(waiter.fetch, "never")
        waiting(waiter, "never", fetchers=1)
        owner.close()
        thread.join(5)
        assert isinstance(box["error"], NwsNoWorkSpaceException)
        assert ws_name not in watcher.listWss(format=DICT)
        with pytest.raises(NwsException):
            owner.listWss()
    finally:
        watcher.close()


def test_handles_pickle_as_their_name(ws):
    import pickle

    clone = pickle.loads(pickle.dumps(ws))
    try:
        ws.store("shared", 5)
        assert clone.fetch("shared") == 5
        assert clone.currentWs() == ws.currentWs()
    finally:
        clone.close()


def test_any_interruption_of_a_blocked_fetch_cancels_it(server, ws) -> None:
    """Not only Ctrl-C: any exception raised into the waiting thread (a cancelled worker task,
    say) withdraws the request, so a value stored afterwards is not swallowed."""
    import signal

    class Interrupted(BaseException):
        pass

    def interrupt(signum, frame):
        raise Interrupted()

    main = threading.get_ident()

    def in_the_wait() -> bool:
        # Only Ctrl-C is held back while a request goes out (``interrupts``): another signal's
        # exception landing just after the send's system call, before its count is kept,
        # reads as a request not sent. The broker may see the fetch that early, so the signal
        # waits for the main thread to be in the wait itself.
        frame = sys._current_frames().get(main)
        return frame is not None and frame.f_code.co_name in ("recv", "_exchange")

    def interrupt_once_waiting():  # SIGUSR1, not SIGALRM: pytest-timeout's timer stays put
        waiting(ws, "late", fetchers=1)
        wait_for(in_the_wait, interval=0.001)
        signal.pthread_kill(main, signal.SIGUSR1)

    previous = signal.signal(signal.SIGUSR1, interrupt)
    try:
        threading.Thread(target=interrupt_once_waiting, daemon=True).start()
        with pytest.raises(Interrupted):
            ws.fetch("late", timeout=10)
    finally:
        signal.signal(signal.SIGUSR1, previous)
    waiting(ws, "late", fetchers=0)  # withdrawn at the broker
    ws.store("late", "kept")
    assert ws.fetchTry("late") == "kept"


def test_a_thread_whose_socket_broke_gets_a_new_one_while_the_session_lives(server, ws):
    """One socket of a session failing (reset, a protocol error) costs that call, not the
    thread's use of the workspace for the rest of the session."""
    ws.store("kept", 1)
    ws._connection.channel().dealer.close()  # as a reset connection leaves it
    ws.store("after", 2)
    assert ws.fetch("kept", timeout=5) == 1 and ws.fetch("after", timeout=5) == 2
