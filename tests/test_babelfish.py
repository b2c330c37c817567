"""The babelfish: a real ``workbench babelfish`` process on a real broker answers ``ask`` about
values read off the broker undecoded, as the web gateway reads them; without one, or once it is
gone, ``ask`` answers None at once; a reply nobody waits for any more is not left behind."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from workbench import NwsServer, codec, shm
from workbench.babelfish import ask, translate
from workbench.client.connection import Connection
from workbench.config import BABELFISH_REQUESTS, BABELFISH_WS
from workbench.protocol import HEADER_SIZE, META, Kind, Op, parse_descriptor

from .support import run_client, wait_for


class Babelfish:
    """A ``python -m workbench babelfish`` process and its log."""

    def __init__(self, broker, log_path) -> None:
        self.log_path = log_path
        with open(log_path, "wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "workbench", "babelfish", "--broker", broker.address],
                env=broker.env(), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                stderr=log)

    def log(self) -> str:
        with open(self.log_path, encoding="utf-8", errors="replace") as f:
            return f.read()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


def serving(server: NwsServer) -> bool:
    return BABELFISH_WS in server.listWss("dict")


def start_babelfish(broker, server: NwsServer, log_path) -> Babelfish:
    babelfish = Babelfish(broker, log_path)
    try:
        # serving: its workspace is there and it said so (it logs just after making it)
        wait_for(lambda: (serving(server) and "babelfish serving" in babelfish.log())
                 or babelfish.process.poll() is not None, timeout=20)
        assert babelfish.process.poll() is None, babelfish.log()
    except BaseException:
        babelfish.stop()
        raise
    return babelfish


@pytest.fixture(scope="module")
def babelfish(broker, tmp_path_factory):
    with NwsServer(broker.address) as server:
        started = start_babelfish(broker, server, tmp_path_factory.mktemp("fish") / "fish.log")
    yield started
    started.stop()


def stored_frames(broker, ws_name: str, var: str) -> list[bytes]:
    """A value's frames as the gateway reads them off the broker: undecoded, a large one as its
    shared-memory reference."""
    connection = Connection(broker.address, 5.0)
    try:
        _, frames = connection.read(
            Op.FIND_TRY, [ws_name.encode(), var.encode()], (), None,
            lambda head, extra: [head[HEADER_SIZE + META.size:], *map(bytes, extra)])
    finally:
        connection.close()
    return frames


def reply_variables(server: NwsServer) -> list[str]:
    if not serving(server):
        return []
    return [name for name in server.listWss("dict")[BABELFISH_WS][5]
            if name != BABELFISH_REQUESTS]


class SlowToUnpickle:
    """Unpickling it sleeps ``seconds`` (and makes None): a babelfish that answers late."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def __reduce__(self):
        return (time.sleep, (self.seconds,))


# ---------------------------------------------------------------------------- answers

def test_a_dict_is_answered_with_a_short_repr_and_its_type(babelfish, server, ws, ws_name,
                                                           broker) -> None:
    ws.store("d", {"name": "run 7", "losses": list(range(1000))})
    answer = ask(server, stored_frames(broker, ws_name, "d"))
    assert answer["type"] == "dict"
    assert answer["repr"].startswith("{'losses': [0, 1, 2, 3, 4, 5")
    assert "..." in answer["repr"] and len(answer["repr"]) <= 200
    assert "shape" not in answer


def test_a_numpy_array_in_shared_memory_is_answered_with_shape_dtype_and_head(
        babelfish, server, ws, ws_name, broker) -> None:
    np = pytest.importorskip("numpy")
    array = np.arange(512 * 1024, dtype=np.int32).reshape(1024, 512)  # 2 MiB: through /dev/shm
    ws.store("a", array)
    frames = stored_frames(broker, ws_name, "a")
    assert parse_descriptor(frames[0])[1] & shm.SHARED, "the broker should hand a reference"
    answer = ask(server, frames)
    assert answer["type"] == "numpy.ndarray"
    assert answer["shape"] == [1024, 512] and answer["dtype"] == "int32"
    head = answer["head"]
    assert head.startswith("[[") and head.count("\n") == 4  # five rows, each cut short
    assert "2048" in head and "2560" not in head  # the fifth row's first value, not the sixth
    assert len(answer["repr"]) <= 200


def test_a_class_defined_in_the_storing_process_comes_by_value(babelfish, broker, server, ws,
                                                               ws_name) -> None:
    done = run_client(broker, textwrap.dedent(f"""
        from workbench import NetWorkSpace

        def measured():
            class Point:
                def __init__(self, x, y):
                    self.x, self.y = x, y

                def __repr__(self):
                    return f"Point({{self.x}}, {{self.y}})"
            return Point(3, 4)

        NetWorkSpace({ws_name!r}, useUse=True).store("p", measured())
        """))
    assert done.returncode == 0, done.stderr
    frames = stored_frames(broker, ws_name, "p")
    assert codec.kind_of(frames) == Kind.CLOUDPICKLE
    assert ask(server, frames) == {"repr": "Point(3, 4)",
                                   "type": "__main__.Point"}


def test_a_value_that_cannot_be_unpickled_is_answered_with_the_error(babelfish, server) -> None:
    frames = codec.from_pickle(b"cno_such_module_here\nThing\n(tR.")  # names a missing module
    answer = ask(server, frames)
    assert answer == {"error": "cannot decode value: ModuleNotFoundError: No module named "
                               "'no_such_module_here'"}


def test_a_pandas_frame_is_answered_with_shape_dtype_and_head(babelfish, server) -> None:
    pandas = pytest.importorskip("pandas")
    frame = pandas.DataFrame({"step": range(100), "loss": [1 / (n + 1) for n in range(100)]})
    answer = ask(server, codec.encode(frame))
    assert answer["type"] == f"{pandas.DataFrame.__module__}.DataFrame"  # pandas.core.frame
    assert answer["shape"] == [100, 2] and answer["dtype"] == "step: int64, loss: float64"
    assert answer["head"].splitlines()[0].split() == ["step", "loss"]
    assert len(answer["head"].splitlines()) == 6  # the header and five rows
    series = ask(server, codec.encode(frame["loss"]))
    assert series["shape"] == [100] and series["dtype"] == "float64"
    assert series["head"].splitlines()[0].split() == ["0", "1.000000"]
    assert len(series["head"].splitlines()) == 5


def test_text_and_integers_are_answered_too(babelfish, server) -> None:
    assert ask(server, codec.encode("x" * 1000))["repr"].startswith("'xxxxxxxx")
    assert ask(server, codec.encode(42)) == {"repr": "42", "type": "int"}


# ---------------------------------------------------------------------------- no babelfish

def test_with_no_babelfish_ask_answers_none_at_once(make_broker) -> None:
    broker = make_broker()
    with NwsServer(broker.address) as server:
        started = time.monotonic()
        assert ask(server, codec.encode({"a": 1}), timeout=10) is None
        assert time.monotonic() - started < 1.0
        assert not serving(server)  # asking made nothing


def test_a_killed_babelfish_takes_its_workspace_with_it(make_broker, tmp_path) -> None:
    broker = make_broker()
    with NwsServer(broker.address) as server:
        babelfish = start_babelfish(broker, server, tmp_path / "fish.log")
        try:
            assert ask(server, codec.encode([1, 2]))["repr"] == "[1, 2]"
            babelfish.process.send_signal(signal.SIGKILL)
            babelfish.process.wait(10)
            wait_for(lambda: not serving(server), timeout=10,
                     message="the workspace should go with its owner's session")
            started = time.monotonic()
            assert ask(server, codec.encode([1, 2]), timeout=10) is None
            assert time.monotonic() - started < 1.0
        finally:
            babelfish.stop()


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_stops_the_babelfish_cleanly(make_broker, tmp_path, signum) -> None:
    broker = make_broker()
    with NwsServer(broker.address) as server:
        babelfish = start_babelfish(broker, server, tmp_path / "fish.log")
        try:
            babelfish.process.send_signal(signum)
            assert babelfish.process.wait(10) == 0
            assert not serving(server)  # its goodbye purged the workspace at once
        finally:
            babelfish.stop()
    log = babelfish.log()
    assert (f"babelfish serving workspace {BABELFISH_WS} on {broker.address}; it unpickles "
            "values on request: run it only where every client that can store is trusted") in log
    assert "babelfish stopping" in log and "Traceback" not in log


def test_a_second_babelfish_shares_the_workspace_and_takes_over(make_broker, tmp_path) -> None:
    broker = make_broker()
    with NwsServer(broker.address) as server:
        first = start_babelfish(broker, server, tmp_path / "first.log")
        second = Babelfish(broker, tmp_path / "second.log")
        try:
            wait_for(lambda: "serving" in second.log(), timeout=20, message=second.log())
            assert "with another babelfish" in second.log()
            first.process.send_signal(signal.SIGTERM)
            assert first.process.wait(10) == 0
            wait_for(lambda: ask(server, codec.encode(7)) is not None, timeout=10)
            owner = server.listWss("dict")[BABELFISH_WS][2]
            assert owner.endswith(f"({second.process.pid})")
        finally:
            first.stop()
            second.stop()


# ---------------------------------------------------------------------------- late replies

def test_an_answer_later_than_the_timeout_is_not_stored(babelfish, server) -> None:
    started = time.monotonic()
    assert ask(server, codec.encode(SlowToUnpickle(1.0)), timeout=0.3) is None
    assert time.monotonic() - started < 0.9
    # The babelfish answers in turn: once this is answered, the slow one is done.
    assert ask(server, codec.encode("next"), timeout=10)["repr"] == "'next'"
    assert reply_variables(server) == []


def slow_one_taken_and_awaited(server: NwsServer) -> bool:
    """The babelfish took the request (none waits) and its asker waits for the answer."""
    rows = server.useWs(BABELFISH_WS, create=False).listVars(format="dict")
    _, queued, *_ = rows.get(BABELFISH_REQUESTS, (None, 0))
    return not queued and any(row[2] for name, row in rows.items() if name.startswith("reply-"))


def test_a_reply_that_waited_in_the_queue_past_its_timeout_goes_away(babelfish, server) -> None:
    slow: list = []
    asking = threading.Thread(
        target=lambda: slow.append(ask(server, codec.encode(SlowToUnpickle(1.0)), timeout=10)))
    asking.start()
    try:
        wait_for(lambda: slow_one_taken_and_awaited(server), timeout=10)
        # Queued behind it: translated in time by the babelfish's clock, after its asker left.
        assert ask(server, codec.encode("queued"), timeout=0.3) is None
    finally:
        asking.join(10)
    assert slow == [{"repr": "None", "type": "NoneType"}]
    # The babelfish answers in turn: once this is answered, the queued one was answered too.
    assert ask(server, codec.encode("after"), timeout=10)["repr"] == "'after'"
    assert len(reply_variables(server)) == 1, "the queued request's answer should be left"
    wait_for(lambda: reply_variables(server) == [], timeout=10,
             message="a reply nobody waits for should be deleted")


# ---------------------------------------------------------------------------- pure parts

def test_translate_bounds_what_it_answers() -> None:
    np = pytest.importorskip("numpy")
    answer = translate(codec.encode(np.zeros((2000, 2000), dtype=np.uint8)))
    assert len(answer["repr"]) <= 200 and len(answer["head"]) <= 2000
    assert translate(codec.encode(np.float64(2.5))) == {"repr": repr(np.float64(2.5)),
                                                       "type": "numpy.float64"}
    scalar = translate(codec.encode(np.array(3)))
    assert scalar["shape"] == [] and scalar["head"] == "3"


def test_translate_refuses_a_shared_memory_reference() -> None:
    head = bytearray(codec.encode(b"x" * 10)[0])
    head[1] |= shm.SHARED
    assert "shared-memory" in translate([bytes(head), b"workbench-1-a-b:10"])["error"]

