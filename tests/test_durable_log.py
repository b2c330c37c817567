"""Unit tests of the durability log (``broker.durable``): the records' binary form, the log file
read back after damage (cut at 100 random offsets, bits flipped at 100 random places: each
replay gives exactly the records before the damage and cuts the rest), the data directory's
lock, compaction, and the fsync policies (``fdatasync`` calls counted, not timed).
"""

from __future__ import annotations

import errno
import os
import random
import subprocess
import sys
import time

import pytest

from .restore_check import next_ids, view_after_restart
from .change_replica import state_view
from .state_driver import StateDriver
from .test_state_restore import History
from workbench import shm
from workbench.broker.durable import DataDir, DataDirLocked, LogError
from workbench.broker.durable.log import HEADER, FRAME, LogWriter, read_log, records_end
from workbench.broker.durable import log, records
from workbench.broker.durable.records import decode, encode, encode_entry
from workbench.broker.state import BrokerState, Limits, SharedMemory, changes
from workbench.broker.state.restore import restore
from workbench.broker.state.snapshot import NextSequence, NextVariableId, ValueReturns
from workbench.protocol import Op, request_head

#: The wall clock minus the state's in these tests (the state's starts at 0).
OFFSET = 1_700_000_000.0


def history(seed: int, steps: int) -> StateDriver:
    """A driver after ``steps`` random requests (``test_state_restore.History``)."""
    run = History(random.Random(seed))
    for _ in range(steps):
        run.step()
    return run.d


def no_shared(reference: bytes):
    raise AssertionError("no shared-memory value here")


def body(record, read_shared=no_shared) -> memoryview:
    return memoryview(b"".join(bytes(b) for b in encode(record, OFFSET, read_shared)))


# ---------------------------------------------------------------- records


EVERY_KIND = [
    changes.WorkspaceCreated("ws", True, b"s" * 16, "host (12)"),
    changes.WorkspaceCreated("w\u00e9", False, None, ""),
    changes.WorkspaceClaimed("ws", False, b"o" * 16, "other"),
    changes.WorkspaceDeleted("ws"),
    changes.Declared("ws", "v", 7, "lifo", False),
    changes.VariableDeleted("ws", "v", 7),
    changes.Stored("ws", "v", 7, 3, [b"\x01\x00\x00\x00abc"], 7, None),
    changes.Stored("ws", "v", 2**40, 2**33, [b"\x05\x00\x02\x00", b"", bytes(200_000)],
                   200_004, None),
    changes.Taken(7, 3), changes.Returned(7, 3, True), changes.Removed(7, 3),
    changes.Expires(7, None), changes.QueueDeclared("job:*"),
    NextVariableId(99), NextSequence(7, 12), ValueReturns(7, 3, 2),
]


@pytest.mark.parametrize("record", EVERY_KIND, ids=lambda r: type(r).__name__)
def test_every_record_reads_back_as_it_was_written(record) -> None:
    assert decode(body(record), OFFSET) == record


def test_a_deadline_is_written_on_the_wall_clock() -> None:
    written = body(changes.Expires(3, 25.5))
    assert decode(written, OFFSET) == changes.Expires(3, 25.5)
    # read by a broker whose clock reads 1000 s less at the same wall-clock time
    assert decode(written, OFFSET + 1000) == changes.Expires(3, 25.5 - 1000)


def test_the_changes_of_a_call_are_written_as_their_records_without_being_built() -> None:
    """The broker encodes a call's ``Effects.log`` entries (``encode_entry``), not the records
    its ``changes`` would build: both read back the same."""
    run = History(random.Random(2))
    entries_read = []

    def read_entries(effects) -> None:
        for entry in effects.log:
            body = b"".join(map(bytes, encode_entry(entry, OFFSET, no_shared)))
            entries_read.append(decode(memoryview(body), OFFSET))

    run.d.on_effects = read_entries
    start = len(run.d.changes)
    for _ in range(300):
        run.step()
    assert entries_read == run.d.changes[start:]
    assert {type(r) for r in entries_read} >= {changes.Stored, changes.Taken, changes.Removed,
                                               changes.Returned, changes.Expires}


class Bodies:
    """What an ``EntryRecorder`` hands a log writer: the bodies, in order."""

    def __init__(self) -> None:
        self.bodies: list[bytes] = []

    def append_body(self, body: bytes) -> None:
        self.bodies.append(body)

    def append(self, body: list) -> None:
        self.bodies.append(b"".join(map(bytes, body)))

    def calls(self) -> list[list]:
        """The records of each body: a call's, one or a ``Group``."""
        decoded = [decode(memoryview(body), OFFSET) for body in self.bodies]
        return [list(each) if type(each) is records.Group else [each] for each in decoded]

    def records(self) -> list:
        return [record for call in self.calls() for record in call]


def test_the_recorder_writes_the_changes_of_calls_as_their_records() -> None:
    """The broker's path: ``EntryRecorder`` encodes most stores itself, the rest through
    ``encode_entry``; all read back as the records the changes stand for."""
    run = History(random.Random(4))
    bodies = Bodies()
    recorder = records.EntryRecorder(bodies, no_shared, OFFSET)
    run.d.on_effects = lambda effects: recorder.record(effects.log)
    start = len(run.d.changes)
    for _ in range(300):
        run.step()
    assert bodies.records() == run.d.changes[start:]
    assert recorder.heads  # the stores went the fast way


def test_a_log_cut_inside_a_call_replays_none_of_its_changes(tmp_path) -> None:
    """The changes of one call (a store that acknowledges a fetch, a STORE_MANY, a
    FETCH_MANY's takes) are one record: a broker killed while copying it into the log leaves
    the records of the calls before, and nothing of that call."""
    run = History(random.Random(5))
    bodies = Bodies()
    recorder = records.EntryRecorder(bodies, no_shared, OFFSET)
    run.d.on_effects = lambda effects: recorder.record(effects.log)
    for _ in range(300):
        run.step()
    calls = bodies.calls()
    assert any(len(call) > 1 for call in calls)  # calls of several changes were grouped
    path = str(tmp_path / "log")
    writer = LogWriter.create(path)
    ends, end = [], HEADER.size
    for data in bodies.bodies:
        writer.append_body(data)
        end += FRAME.size + len(data)
        ends.append(end)
    writer.commit(sync=True)
    writer.close()
    rnd = random.Random(29)
    for trial in range(60):
        at = rnd.randrange(HEADER.size, ends[-1])
        copy = damaged_copy(path, tmp_path, f"cut{trial}")
        os.truncate(copy, at)
        whole = sum(end <= at for end in ends)
        found, _ = replayed(copy)
        assert found == [record for call in calls[:whole] for record in call], f"cut at {at}"
        os.unlink(copy)


def test_stores_into_more_variables_than_the_recorder_remembers_are_written_right(
        monkeypatch) -> None:
    """A store's record repeats its variable's names and id: the recorder keeps them by
    variable, a bounded number of variables at a time; past the bound each store is still
    written with its own variable's."""
    monkeypatch.setattr(records, "_MOST_HEADS", 3)
    driver = StateDriver()
    peer = driver.client("ws")
    bodies = Bodies()
    recorder = records.EntryRecorder(bodies, no_shared, OFFSET)
    driver.on_effects = lambda effects: recorder.record(effects.log)
    start = len(driver.changes)
    for n in range(40):  # names of several lengths, variables coming back after others
        driver.store(peer, "ws", "v" * (1 + n % 7), n)
        driver.store(peer, "ws", f"w{n}", b"x" * n)
    written = bodies.records()
    stored = [record for record in written if type(record) is changes.Stored]
    assert written == driver.changes[start:] and len(stored) == 80
    assert 0 < len(recorder.heads) <= 3


def test_frames_of_any_buffer_type_are_written_raw() -> None:
    record = changes.Stored("ws", "v", 1, 1, [bytearray(b"\x00\x00\x02\x00x"),
                                              memoryview(b"yy"), bytearray(70_000)], 70_007, None)
    assert decode(body(record), OFFSET).frames == [b"\x00\x00\x02\x00x", b"yy", bytes(70_000)]


def test_a_shared_memory_value_is_written_with_its_files_data(tmp_path) -> None:
    value = [b"\x03\x00\x02\x00head", b"first frame", bytes(range(256)) * 10]
    frames, path = shm.spill(value, os.getpid(), "0" * 16)
    try:
        reference = frames[1]
        record = changes.Stored("ws", "v", 1, 1, frames, 4 + 11 + 2560 + 4, reference)
        inlined = decode(body(record, shm.attach), OFFSET)
        assert inlined.frames == value and inlined.shared is None
        assert inlined.size == record.size
        unreadable = decode(body(record, lambda ref: None), OFFSET)
        assert unreadable.frames == frames and unreadable.shared == reference
    finally:
        os.unlink(path)


# ---------------------------------------------------------------- the file and its damage


def write_log(path: str, records: list) -> list[int]:
    """Write ``records`` to a new log, a few at a time -> where each record ends."""
    writer = LogWriter.create(path)
    ends, end = [], HEADER.size
    for index, record in enumerate(records):
        writer.append(encode(record, OFFSET, no_shared))
        if index % 7 == 0:
            writer.commit(sync=False)
        end += FRAME.size + len(body(record))
        ends.append(end)
    writer.commit(sync=True)
    writer.close()
    return ends


def replayed(path: str) -> tuple[list, object]:
    records: list = []
    replay = read_log(path, OFFSET, records.append)
    return records, replay


@pytest.fixture(scope="module")
def logged(tmp_path_factory) -> tuple[str, list, list[int]]:
    """A log of a random history: its path, its records and where each ends."""
    driver = history(seed=3, steps=400)
    path = str(tmp_path_factory.mktemp("log") / "log")
    records = driver.changes
    return path, records, write_log(path, records)


def test_a_log_reads_back_whole_and_restores_the_state(logged) -> None:
    path, records, ends = logged
    found, replay = replayed(path)
    assert found == records and replay.records == len(records) and not replay.cut_bytes
    assert os.path.getsize(path) == ends[-1] == replay.good_bytes


def damaged_copy(source: str, tmp_path, name: str) -> str:
    path = str(tmp_path / name)
    with open(source, "rb") as f, open(path, "wb") as out:
        out.write(f.read())
    return path


def test_a_log_cut_anywhere_gives_the_records_before_the_cut(logged, tmp_path) -> None:
    path, records, ends = logged
    rnd = random.Random(17)
    size = ends[-1]
    for trial in range(100):
        at = rnd.randrange(HEADER.size, size)
        copy = damaged_copy(path, tmp_path, f"cut{trial}")
        os.truncate(copy, at)
        whole = sum(end <= at for end in ends)
        found, replay = replayed(copy)
        assert found == records[:whole], f"cut at {at}"
        good = ends[whole - 1] if whole else HEADER.size
        assert (replay.good_bytes, replay.cut_bytes) == (good, at - good)
        assert replay.cut_records == (1 if at > good else 0)
        assert os.path.getsize(copy) == good  # cut, so that appending goes on from there
        assert replayed(copy)[0] == found and not replayed(copy)[1].cut_bytes
        restore(BrokerState(), found)  # a history cut short is still a history
        os.unlink(copy)


def test_flipped_bits_anywhere_give_the_records_before_the_first_damaged_one(
        logged, tmp_path) -> None:
    path, records, ends = logged
    rnd = random.Random(23)
    size = ends[-1]
    for trial in range(100):
        copy = damaged_copy(path, tmp_path, f"flip{trial}")
        places = [rnd.randrange(HEADER.size, size) for _ in range(rnd.choice((1, 1, 2, 5)))]
        with open(copy, "r+b") as f:
            for place in places:
                f.seek(place)
                byte = f.read(1)[0]
                f.seek(place)
                f.write(bytes([byte ^ (1 << rnd.randrange(8))]))
        first = min(places)
        whole = sum(end <= first for end in ends)
        found, replay = replayed(copy)
        assert found == records[:whole], f"bits flipped at {places}"
        assert replay.cut_records >= 1 and replay.good_bytes == (
            ends[whole - 1] if whole else HEADER.size)
        assert replay.cut_records <= len(records) - whole
        os.unlink(copy)


def test_the_records_after_a_damaged_one_are_counted_as_cut(logged, tmp_path) -> None:
    path, records, ends = logged
    copy = damaged_copy(path, tmp_path, "middle")
    middle = len(records) // 2
    with open(copy, "r+b") as f:  # the last byte of one record in the middle
        f.seek(ends[middle] - 1)
        byte = f.read(1)[0]
        f.seek(ends[middle] - 1)
        f.write(bytes([byte ^ 0xFF]))
    found, replay = replayed(copy)
    assert len(found) == middle and replay.cut_records == len(records) - middle
    assert replay.describe().endswith(
        f"{len(records) - middle} records, {ends[-1] - ends[middle - 1]} bytes")


def test_a_file_that_is_not_a_log_or_a_newer_one_is_refused_untouched(tmp_path) -> None:
    other = tmp_path / "other"
    other.write_bytes(b"something else entirely")
    with pytest.raises(LogError, match="not a workbench log"):
        replayed(str(other))
    assert other.read_bytes() == b"something else entirely"
    newer = tmp_path / "newer"
    newer.write_bytes(HEADER.pack(b"wblog\x00\x00\x00", 2) + b"\x00" * 40)
    with pytest.raises(LogError, match="format 2"):
        replayed(str(newer))
    assert os.path.getsize(newer) == HEADER.size + 40


def test_a_torn_header_is_an_empty_log(tmp_path) -> None:
    path = tmp_path / "log"
    path.write_bytes(b"wbl")
    found, replay = replayed(str(path))
    assert found == [] and replay.cut_bytes == 3 and os.path.getsize(path) == 0


# ---------------------------------------------------------------- the mapped file's zeros


def left_open(path: str, records: list) -> LogWriter:
    """A writer that appended and committed ``records`` and is still open, as a broker that
    runs or was killed leaves its log: the file runs on in zeros after them."""
    writer = LogWriter.create(path)
    for record in records:
        writer.append(encode(record, OFFSET, no_shared))
    writer.commit(sync=False)
    return writer


def test_the_zeros_after_the_records_of_an_open_log_are_its_clean_end(logged, tmp_path) -> None:
    path, records, ends = logged
    copy = str(tmp_path / "open")
    writer = left_open(copy, records)
    assert os.path.getsize(copy) > ends[-1] == writer.size == records_end(copy)
    found, replay = replayed(copy)  # as after a SIGKILL: the writer was never closed
    assert found == records and not replay.cut_bytes
    assert replay.describe() == f"{len(records)} records"
    assert os.path.getsize(copy) == ends[-1]  # cut all the same
    writer.close()


def test_zeros_followed_by_anything_else_are_damage(logged, tmp_path) -> None:
    path, records, ends = logged
    writer = left_open(str(tmp_path / "open"), records)
    size = os.path.getsize(tmp_path / "open")
    for place in (ends[-1], ends[-1] + 5000, size - 1):
        copy = damaged_copy(str(tmp_path / "open"), tmp_path, "damaged")
        with open(copy, "r+b") as f:
            f.seek(place)
            f.write(b"\x01")
        found, replay = replayed(copy)
        assert found == records, place
        assert (replay.good_bytes, replay.cut_bytes, replay.cut_records) == (
            ends[-1], size - ends[-1], 1)
        assert os.path.getsize(copy) == ends[-1]
    writer.close()


def test_a_file_of_zeros_is_an_empty_log(tmp_path) -> None:
    """The file was extended, and the machine crashed before its header reached the disk."""
    path = tmp_path / "log"
    path.write_bytes(bytes(100_000))
    found, replay = replayed(str(path))
    assert found == [] and not replay.cut_bytes and os.path.getsize(path) == 0


@pytest.mark.parametrize("extend, big", [(4096, 1 << 20), (4096, 1024), (64 << 10, 1 << 20)])
def test_records_that_overrun_the_mapping_are_written_in_order(
        logged, tmp_path, monkeypatch, extend, big) -> None:
    """The file is mapped ``EXTEND`` bytes at a time: records that do not fit in what is left
    are copied into the next stretch, or written where they are past ``_BIG``; the log reads
    back the same, and a compaction's tap is given exactly what the file holds."""
    monkeypatch.setattr(log, "EXTEND", extend)
    monkeypatch.setattr(log, "_BIG", big)
    _, history_records, _ = logged
    records = history_records + EVERY_KIND * 3
    path = str(tmp_path / "log")
    writer = LogWriter.create(path)
    tapped: list = []
    writer.tap = tapped.extend
    for index, record in enumerate(records):
        writer.append(encode(record, OFFSET, no_shared))
        if index % 5 == 0:
            writer.commit(sync=False)
    writer.commit(sync=True)
    writer.close()
    with open(path, "rb") as f:
        written = f.read()
    assert b"".join(map(bytes, tapped)) == written[HEADER.size:]
    assert len(written) == writer.size
    found, replay = replayed(path)
    assert found == records and not replay.cut_bytes


def test_a_disk_that_refuses_room_fails_the_commit_and_the_log_keeps_its_records(
        tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(log, "EXTEND", 4096)
    path = str(tmp_path / "log")
    writer = LogWriter.create(path)
    stores = [changes.Stored("ws", "v", 1, n, [bytes([n]) * 700], 700, None) for n in range(30)]

    def no_space(fd: int, offset: int, length: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    real = os.posix_fallocate
    monkeypatch.setattr(os, "posix_fallocate", no_space)
    for record in stores[:20]:  # more than the 4 kB mapped: the rest wait for more room
        writer.append(encode(record, OFFSET, no_shared))
    assert writer.waiting
    with pytest.raises(OSError, match="No space"):
        writer.commit(sync=False)
    # the records in the mapping are in the file; those that waited are not, nor a part
    assert writer.size == records_end(path) == os.path.getsize(path) and not writer.waiting
    monkeypatch.setattr(os, "posix_fallocate", real)  # room again: the log goes on
    for record in stores[20:]:
        writer.append(encode(record, OFFSET, no_shared))
    writer.commit(sync=True)
    writer.close()
    found = replayed(path)[0]
    kept = len(found) - 10
    assert 3 <= kept < 20 and found == stores[:kept] + stores[20:]


# ---------------------------------------------------------------- the data directory


class Syncs:
    """``fdatasync`` that counts its calls."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, fd: int) -> None:
        self.calls += 1
        os.fdatasync(fd)


def data_dir(path, driver: StateDriver | None = None, **options) -> DataDir:
    """A data directory whose wall clock runs with the driver's clock, ``OFFSET`` ahead."""
    return DataDir(str(path), wall_clock=lambda: OFFSET + (driver.now if driver else 0.0),
                   **options)


def logged_run(directory: DataDir, driver: StateDriver, steps: int, run: History) -> None:
    """``steps`` random requests, each one's records recorded and committed as the broker
    does, with the work of a pass after it."""
    for _ in range(steps):
        run.step()
        directory.record(driver.new_changes())
        directory.commit()
        directory.work(driver.now)


def reopened(path, driver: StateDriver | None = None) -> tuple[BrokerState, object, object]:
    """A new state restored from the directory at the driver's time."""
    state = BrokerState()
    directory = data_dir(path, driver)
    replay, report = directory.open(state, driver.now if driver else 0.0)
    directory.close()
    return state, replay, report


def assert_restored(state: BrokerState, driver: StateDriver) -> None:
    assert state_view(state) == view_after_restart(driver.state)
    assert next_ids(state)["var_id"] == next_ids(driver.state)["var_id"]


def logged_history(path, seed: int, steps: int) -> History:
    """``steps`` random requests logged in the data directory ``path`` by a broker that then
    stops."""
    run = History(random.Random(seed))
    directory = data_dir(path, run.d)
    directory.open(run.d.state, run.d.now)
    logged_run(directory, run.d, steps, run)
    directory.close()
    return run


def test_a_data_directory_restores_what_was_logged(tmp_path) -> None:
    run = logged_history(tmp_path, 5, 300)
    state, replay, report = reopened(tmp_path, run.d)
    assert replay.records == len(run.d.changes) and not report.misfits
    assert_restored(state, run.d)


def test_the_restart_is_logged_too(tmp_path) -> None:
    """The purges and put-backs of one restart are records: a second restart finds the same."""
    run = logged_history(tmp_path, 6, 200)
    first, _, report = reopened(tmp_path, run.d)
    assert report.purged == ["np"]
    second, _, again = reopened(tmp_path, run.d)
    assert state_view(second) == state_view(first) and again.purged == again.misfits == []


def test_a_damaged_tail_is_cut_and_reported_and_the_log_goes_on(tmp_path) -> None:
    run = logged_history(tmp_path, 7, 100)
    log = tmp_path / "log"
    os.truncate(log, os.path.getsize(log) - 3)
    state = BrokerState()
    directory = data_dir(tmp_path, run.d)
    replay, _ = directory.open(state, run.d.now)
    assert replay.cut_records == 1 and replay.cut_bytes > 0
    driver = StateDriver.around(state, run.d.now)
    peer = driver.connect()
    driver.open_ws(peer, "after", persistent=True)
    driver.store(peer, "after", "x", "still logged")
    directory.record(driver.changes)
    directory.commit()
    directory.close()
    restored, replay, _ = reopened(tmp_path, run.d)
    assert not replay.cut_bytes
    assert [value.frames for value in restored.spaces.get("after").variables["x"].values] == \
        [value.frames for value in state.spaces.get("after").variables["x"].values]


def test_an_interrupted_compactions_file_is_removed_at_start(tmp_path) -> None:
    (tmp_path / "log.new").write_bytes(b"half a snapshot")
    reopened(tmp_path)
    assert sorted(os.listdir(tmp_path)) == ["lock", "log"]


def test_a_second_broker_on_the_directory_is_refused_with_the_first_ones_pid(tmp_path) -> None:
    first = data_dir(tmp_path)
    first.open(BrokerState(), 0.0)
    with pytest.raises(DataDirLocked, match=f"in use by another broker \\(pid {os.getpid()}\\)"):
        data_dir(tmp_path).lock()
    other = subprocess.run(
        [sys.executable, "-c", "import sys; from workbench.broker.durable import DataDir\n"
         "try:\n DataDir(sys.argv[1]).lock()\nexcept Exception as exc:\n print(exc)",
         str(tmp_path)], capture_output=True, text=True, timeout=30)
    assert f"pid {os.getpid()}" in other.stdout
    first.close()
    second = data_dir(tmp_path)
    second.lock()  # free again
    second.close()


def test_the_loop_is_asked_to_work_once_the_log_may_need_a_compaction(tmp_path) -> None:
    """``wants_work`` (read by the broker's loop every pass, in place of a call to ``work``)
    is on while the log is past the size that may need a compaction (``--compact-min``, and
    twice the last snapshot) and while a compaction is under way."""
    run = History(random.Random(9))
    directory = data_dir(tmp_path, run.d, compact_min=8 << 10, compact_slice=0.0)
    directory.open(run.d.state, run.d.now)
    for _ in range(3000):
        assert directory.wants_work == (
            directory.compaction is not None
            or directory.writer.size > max(8 << 10, 2 * directory.snapshot_bytes))
        if directory.compactions == 2:
            break
        run.step()
        directory.record(run.d.new_changes())
        directory.commit()
        if directory.wants_work:
            directory.work(run.d.now)
    assert directory.compactions == 2
    directory.close()


def test_compaction_keeps_the_state_while_the_broker_goes_on(tmp_path) -> None:
    run = History(random.Random(8))
    directory = data_dir(tmp_path, run.d, compact_min=8 << 10, compact_slice=0.0)
    directory.open(run.d.state, run.d.now)
    for _ in range(600):  # each pass takes a slice of a compaction under way
        logged_run(directory, run.d, 1, run)
    while directory.compaction is not None:  # let the last one finish
        directory.work(run.d.now)
    assert directory.compactions >= 2
    directory.close()
    state, replay, report = reopened(tmp_path, run.d)
    assert not replay.cut_bytes and not report.misfits
    assert_restored(state, run.d)
    assert replay.records < len(run.d.changes)


# ---------------------------------------------------------------- fsync policies


def counted(path, policy: str) -> tuple[Syncs, StateDriver, DataDir]:
    """A state logged in ``path`` under ``policy``, its ``fdatasync`` calls counted from 0
    once the directory is open."""
    syncs = Syncs()
    driver = StateDriver()
    directory = data_dir(path, fsync=policy, fdatasync=syncs)
    directory.open(driver.state, 0.0)
    syncs.calls = 0
    return syncs, driver, directory


def test_always_puts_each_pass_on_disk_with_one_fdatasync(tmp_path) -> None:
    syncs, driver, directory = counted(tmp_path, "always")
    before = directory.status()
    assert before["fsync"] == "always" and before["last_compaction"] is None
    peers = [driver.client() for _ in range(4)]
    for peer in peers:  # four clients' requests in one pass
        driver.open_ws(peer, f"ws{peers.index(peer)}", persistent=True)
        driver.store(peer, f"ws{peers.index(peer)}", "x", 1)
        directory.record(driver.new_changes())
    directory.commit()
    assert syncs.calls == 1
    directory.commit()  # a pass that changed nothing
    assert syncs.calls == 1
    after = directory.status()
    # the file runs on in zeros while the log is open: its records end where the status says
    assert after["log_bytes"] == records_end(tmp_path / "log") > before["log_bytes"]
    assert before["last_fsync"] is None and after["last_fsync"] is not None
    directory.close()


@pytest.mark.parametrize("policy", ["everysec", "no"])
def test_everysec_and_no_write_each_pass_without_fdatasync(tmp_path, policy) -> None:
    syncs, driver, directory = counted(tmp_path, policy)
    peer = driver.client()
    driver.open_ws(peer, "ws", persistent=True)
    for n in range(20):
        driver.store(peer, "ws", "x", n)
        directory.record(driver.new_changes())
        directory.commit()
        # in the file (the page cache), for a process crash to keep
        assert records_end(tmp_path / "log") == directory.writer.size
    if policy == "everysec":  # what its thread does once a second
        directory.sync_if_written()
        directory.sync_if_written()  # nothing written since: no call
        assert syncs.calls in (1, 2)  # its thread may have been at work meanwhile
        assert not directory.writer.unsynced
    else:
        assert syncs.calls == 0
        directory.close()  # a clean stop puts everything on disk
        assert syncs.calls == 1


@pytest.mark.parametrize("policy", ["everysec", "no", "always"])
def test_a_recorded_change_is_in_the_file_before_the_pass_commits(
        tmp_path, monkeypatch, policy) -> None:
    """The broker's path (``record_log``, then ``commit`` only if ``needs_commit``): under
    ``everysec`` and ``no`` a change's record is in the file (the page cache) as soon as it
    is recorded, so a pass needs no commit; one that does not fit in the log's mapping waits,
    and the pass must commit; under ``always`` every pass commits (``fdatasync``)."""
    monkeypatch.setattr(log, "EXTEND", 4096)  # the mapping fills up every few stores
    syncs, driver, directory = counted(tmp_path, policy)
    peer = driver.client()
    driver.open_ws(peer, "ws", persistent=True)
    directory.record(driver.new_changes())
    directory.commit()
    syncs.calls = 0
    driver.on_effects = lambda effects: directory.record_log(effects.log)
    waited = 0
    for n in range(60):
        before = records_end(tmp_path / "log")
        driver.store(peer, "ws", "x", b"v" * (50 * n))
        written = records_end(tmp_path / "log")
        if directory.writer.waiting:  # no room left in the mapping: in the file at commit
            waited += 1
            assert directory.needs_commit and written == before
        else:
            assert directory.needs_commit == (policy == "always") and written > before
        if directory.needs_commit:
            directory.commit()
        assert records_end(tmp_path / "log") == directory.writer.size > before
        assert not directory.writer.waiting
    assert waited > 3
    if policy != "everysec":  # (whose thread syncs when it will)
        assert syncs.calls == (60 if policy == "always" else 0)
    directory.close()
    restored, replay, _ = reopened(tmp_path)
    assert not replay.cut_bytes
    assert [value.frames for value in restored.spaces.get("ws").variables["x"].values] == \
        [value.frames for value in driver.state.spaces.get("ws").variables["x"].values]


def test_everysecs_thread_syncs_what_was_written(tmp_path) -> None:
    syncs, driver, directory = counted(tmp_path, "everysec")
    peer = driver.client()
    driver.open_ws(peer, "ws", persistent=True)
    directory.record(driver.new_changes())
    directory.commit()
    deadline = time.monotonic() + 10
    while syncs.calls == 0 and time.monotonic() < deadline:
        time.sleep(0.05)  # polling under a deadline
    assert syncs.calls == 1 and not directory.writer.unsynced
    directory.close()


# ---------------------------------------------------------------- shared-memory values


def shared_store(state: BrokerState, value: list) -> tuple[str, list]:
    """Store ``value`` the way a client on the broker's machine does, through a file in
    ``/dev/shm`` -> the file's path (the broker owns it now) and the change records."""
    peer = b"s" * 16 + b"\0\0"
    records = state.handle(peer, request_head(Op.HELLO, 1, [b'{"shm": "box"}']), [],
                           0.0).changes
    records += state.handle(peer, request_head(Op.OPEN_WS, 2, [b"ws", b"1", b"1"]), [],
                            0.0).changes
    frames, path = shm.spill(value, os.getpid(), "ab")
    files = {frames[1]: os.path.getsize(path)}
    records += state.handle(peer, request_head(Op.STORE, 3, [b"ws", b"big", frames[0]]),
                            [frames[1]], 0.0, files).changes
    assert records[-1].shared == frames[1]
    return path, records


VALUE = [b"\x00\x00\x02\x00", b"one frame", bytes(range(256)) * 4096]


def sharing_state() -> BrokerState:
    return BrokerState(Limits(), random.Random(0), 0.0, SharedMemory("box", os.getpid()))


def stored_frames(state: BrokerState) -> list:
    [value] = state.spaces.get("ws").variables["big"].values
    assert value.shared is None
    return [bytes(frame) for frame in value.frames]


def test_a_shared_memory_value_outlives_its_file_in_the_log(tmp_path) -> None:
    state = sharing_state()
    directory = data_dir(tmp_path)
    directory.open(state, 0.0)
    path, records = shared_store(state, VALUE)
    directory.record(records)
    directory.commit()
    os.unlink(path)  # the broker stops: its files go
    directory.close()
    restored, _, _ = reopened(tmp_path)
    assert stored_frames(restored) == VALUE


def test_a_compaction_keeps_a_shared_memory_value_whose_file_went_meanwhile(tmp_path) -> None:
    state = sharing_state()
    directory = data_dir(tmp_path, compact_min=0, compact_factor=0, compact_slice=0.0)
    directory.open(state, 0.0)
    path, records = shared_store(state, VALUE)
    reference = records[-1].shared
    os.unlink(path)  # before the log wrote it: its reference is all the log can keep
    directory.record(records)
    directory.commit()
    path, records = shared_store(state, VALUE[:2] + [b"z" * 3_000_000])
    directory.record(records)
    directory.commit()
    directory.work(0.0)  # starts a compaction: the file is mapped now
    assert directory.busy
    os.unlink(path)
    while directory.compaction is not None:
        directory.work(0.0)
    directory.close()
    restored, _, _ = reopened(tmp_path)
    [gone, kept] = restored.spaces.get("ws").variables["big"].values
    assert gone.shared == reference and gone.frames[1] == reference  # as it was
    assert [bytes(frame) for frame in kept.frames] == VALUE[:2] + [b"z" * 3_000_000]


def test_a_replay_that_fails_leaves_the_file_as_it_was(logged) -> None:
    path, records, ends = logged

    def refuse(record) -> None:
        raise RuntimeError("the state refused")

    with pytest.raises(RuntimeError, match="the state refused"):
        read_log(path, OFFSET, refuse)
    assert os.path.getsize(path) == ends[-1]
