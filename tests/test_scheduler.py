"""The sleigh's scheduler driven directly, without a broker, sockets or worker processes:
feeding a call's chunks through its window, results settling elements, errors, cancelling,
workers joining and leaving (eachWorker), what observers see, and the retry accounting of
records that come back from dead workers."""

from __future__ import annotations

import logging
import threading
import time

import pytest

from workbench.sleigh import scheduler as scheduler_module
from workbench.sleigh.batch import Results
from workbench.sleigh.errors import ERROR, ErrorInfo, RemoteError, SleighError
from workbench.sleigh.events import CallProgress, WorkerJoined, WorkerLeft
from workbench.sleigh.scheduler import (
    Scheduler, must_split, poisoned, split_suspects,
)
from workbench.sleigh.tasks import (
    CHUNK_WORKERS, CONTROL, DEATHS_LIMIT, HAND_SECONDS, TASK, Hello, ResultEntry, TaskRecord,
    even_chunks, guided_chunks, own_records, paced_chunks, read_entry, read_record, records,
)

KEY = "k" * 24


@pytest.fixture
def scheduler() -> Scheduler:
    return Scheduler()


def each_elem(scheduler: Scheduler, items: list, size: int, window: int | None = None,
              **options):
    """A call of ``len(items)`` elements in chunks of ``size``, as eachElem opens one."""
    return scheduler.open("f", KEY, len(items), window,
                          records=lambda batch: records(batch, KEY, items,
                                                        even_chunks(len(items), size)),
                          **options)


def answer(record: TaskRecord, rank: int = 0, fail: set[int] = frozenset()) -> ResultEntry:
    """What a worker sends back for ``record``: each element's argument times ten."""
    info = ErrorInfo(ERROR, "ValueError", "bad", "Traceback ...", None)
    return ResultEntry(record.batch, record.tag0, rank,
                       [None if i in fail else item[0] * 10
                        for i, item in enumerate(record.items)],
                       [(i, info) for i in sorted(fail)] or None)


def hello(rank: int, farewell: str | None = None) -> Hello:
    return Hello(CONTROL, rank, {"rank": rank, "host": "h", "pid": 100 + rank},
                 farewell or f"farewell@{rank}.s")


# ---------------------------------------------------------------------------- feeding

def test_a_call_without_a_window_is_taken_whole_in_chunks(scheduler):
    items = [(x,) for x in range(10)]
    batch = each_elem(scheduler, items, 4)
    taken = scheduler.take(batch, most=100)
    assert [var for var, _ in taken.records] == [TASK] * 3
    assert [(r.tag0, r.items) for _, r in taken.records] == [
        (0, items[0:4]), (4, items[4:8]), (8, items[8:10])]
    assert not taken.full
    assert batch.submitted == 10 and batch.total == 10 and batch.source is None
    assert scheduler.take(batch, most=100).records == []  # nothing left


def test_take_stops_at_most_records_and_says_there_may_be_more(scheduler):
    batch = each_elem(scheduler, [(x,) for x in range(10)], 1)
    first = scheduler.take(batch, most=4)
    assert len(first.records) == 4 and first.full and batch.total == 10
    assert batch.submitted == 4 and batch.source is not None
    rest = scheduler.take(batch, most=100)
    assert len(rest.records) == 6 and not rest.full and batch.source is None


def test_a_window_bounds_the_elements_in_flight_and_results_make_room(scheduler):
    batch = each_elem(scheduler, [(x,) for x in range(10)], 1, window=3)
    sent = [r for _, r in scheduler.take(batch, most=100).records]
    assert [r.tag0 for r in sent] == [0, 1, 2] and batch.in_flight() == 3
    assert scheduler.take(batch, most=100).records == []  # the window is full
    filed = scheduler.file(answer(sent[0]))
    assert filed.feed and filed.batch is batch and batch.done == 1  # room for one more
    assert [r.tag0 for _, r in scheduler.take(batch, most=100).records] == [3]


def test_a_lazy_call_counts_elements_in_flight_until_consumed(scheduler):
    produced = iter([(x,) for x in range(100)])
    batch = scheduler.open("f", KEY, None, 2, by_consumer=True,
                           records=lambda b: iter([(TASK, TaskRecord(b, t, KEY, [next(produced)]))
                                                   for t in range(5)]))
    sent = [r for _, r in scheduler.take(batch, most=100).records]
    assert len(sent) == 2 and batch.total is None
    assert scheduler.file(answer(sent[0])) is None  # received, not consumed: no room yet
    assert scheduler.take(batch, most=100).records == []
    assert scheduler.take_ready(batch, 0) == ([0], None)
    assert scheduler.take_ready(batch, 1) == ([], None)  # taken once
    assert len(scheduler.take(batch, most=100).records) == 1


def test_end_source_fixes_the_total_to_what_was_sent(scheduler):
    batch = each_elem(scheduler, [(x,) for x in range(10)], 1, window=2)
    sent = [r for _, r in scheduler.take(batch, most=100).records]
    scheduler.end_source(batch)
    assert batch.total == 2 and batch.source is None and not batch.finished
    for record in sent:
        scheduler.file(answer(record))
    assert batch.finished and batch.ordered() == [0, 10]


def test_a_source_that_raises_reaches_the_caller(scheduler):
    def broken(batch):
        yield TASK, TaskRecord(batch, 0, KEY, [(1,)])
        raise OSError("the input file vanished")

    batch = scheduler.open("f", KEY, None, None, records=broken)
    with pytest.raises(OSError, match="vanished"):
        scheduler.take(batch, most=100)


# ---------------------------------------------------------------------------- settling

def test_results_settle_elements_and_the_call(scheduler):
    items = [(x,) for x in range(6)]
    batch = each_elem(scheduler, items, 2)
    sent = [r for _, r in scheduler.take(batch, most=100).records]
    assert scheduler.status(False).outstanding == 6 and scheduler.status(False).batches == 1
    for record in reversed(sent):  # any order
        scheduler.file(answer(record, rank=1))
    assert batch.finished and batch.done == 6 and batch.state == "done"
    assert batch.ordered() == [0, 10, 20, 30, 40, 50]
    assert scheduler.status(False).batches == 0  # forgotten once complete
    assert scheduler.file(answer(sent[0])) is None  # late: the call is over


def test_a_result_that_comes_twice_counts_once(scheduler):
    batch = each_elem(scheduler, [(x,) for x in range(4)], 2)
    first, second = (r for _, r in scheduler.take(batch, most=100).records)
    scheduler.file(answer(first))
    # its worker died after sending it, before the acknowledgement: it ran again
    assert scheduler.file(answer(first, rank=1)) is None
    assert batch.done == 2 and scheduler.status(False).duplicates == 2
    scheduler.file(answer(second))
    assert batch.ordered() == [0, 10, 20, 30]


def test_results_are_taken_a_run_at_a_time_up_to_the_first_missing_one(scheduler):
    batch = each_elem(scheduler, [(x,) for x in range(12)], 3)
    sent = [r for _, r in scheduler.take(batch, most=100).records]  # tags 0, 3, 6, 9
    scheduler.file(answer(sent[1]))
    scheduler.file(answer(sent[3]))
    assert scheduler.take_ready(batch, 0) == ([], None)  # element 0 is not in yet
    scheduler.file(answer(sent[0]))
    assert scheduler.take_ready(batch, 0) == ([0, 10, 20, 30, 40, 50], None)
    assert scheduler.take_ready(batch, 6) == ([], None)
    scheduler.file(answer(sent[2]))
    assert scheduler.take_ready(batch, 6) == ([60, 70, 80, 90, 100, 110], None)
    assert len(batch.results) == 0 and batch.consumed == 12


def test_a_chunk_that_overlaps_results_in_or_taken_files_only_the_new_ones(scheduler):
    batch = each_elem(scheduler, [(x,) for x in range(6)], 6)
    [(_, record)] = scheduler.take(batch, most=100).records
    # the record ran in part, its worker died, and its elements came back one by one
    singles = split_suspects(record, 1)
    scheduler.file(answer(singles[0]))
    scheduler.file(answer(singles[3]))
    assert scheduler.take_ready(batch, 0) == ([0], None)
    scheduler.file(answer(record, fail={4}))  # then the whole record, from the first worker
    assert batch.done == 6 and scheduler.status(False).duplicates == 2
    values, failed = scheduler.take_ready(batch, 1, find_failure=True)
    assert values[:3] == [10, 20, 30] and values[4] == 50 and failed == 3
    assert isinstance(values[3], RemoteError) and values[3].tag == 4


def test_a_duplicates_error_does_not_replace_a_result_in(scheduler):
    batch = each_elem(scheduler, [(x,) for x in range(3)], 3)
    [(_, record)] = scheduler.take(batch, most=100).records
    scheduler.file(answer(record))
    scheduler.file(answer(record, rank=1, fail={1}))  # it ran again, and failed there
    assert batch.ordered() == [0, 10, 20] and batch.failed == set()


def test_results_are_kept_as_runs_of_elements():
    results = Results()
    results.add(5, ["f", "g"])
    results.add(0, ["a", "b"])
    assert results.frontier == 2 and len(results) == 4
    assert 1 in results and 2 not in results and 6 in results and 7 not in results
    assert results.get(6) == "g" and results.get(3, "none") == "none"
    assert results.overlaps(1, 3) and results.overlaps(4, 6) and not results.overlaps(2, 5)
    assert results.ordered() == ["a", "b", "f", "g"]  # eachWorker's gaps: in tag order
    results.add(2, ["c", "d", "e"])
    assert results.frontier == 7
    assert results.take(0) == ["a", "b", "c", "d", "e", "f", "g"]
    assert len(results) == 0 and results.take(7) == [] and 0 not in results


def test_failed_elements_come_back_as_remote_errors(scheduler):
    batch = each_elem(scheduler, [(x,) for x in range(3)], 3)
    [(_, record)] = scheduler.take(batch, most=100).records
    scheduler.file(answer(record, rank=1, fail={1}))
    results = batch.ordered()
    assert results[0] == 0 and results[2] == 20
    assert isinstance(results[1], RemoteError) and results[1].worker == 1
    assert results[1].tag == 1 and results[1].type_name == "ValueError"
    assert batch.failed == {1}


def test_a_submit_resolves_its_future_with_its_one_result(scheduler):
    futures = []
    ok = scheduler.open("f", KEY, 1, future=lambda b: futures.append(b) or "future")
    bad = scheduler.open("f", KEY, 1, future=lambda b: "future")
    assert ok.future == "future" and futures == [ok] and ok.submitted == 1
    assert scheduler.futures() == [ok, bad]
    filed = scheduler.file(answer(TaskRecord(ok.id, 0, KEY, [(4,)])))
    assert filed.resolution == (40, False)
    filed = scheduler.file(answer(TaskRecord(bad.id, 0, KEY, [(4,)]), fail={0}))
    value, failed = filed.resolution
    assert failed and isinstance(value, RemoteError)
    assert scheduler.futures() == []


def test_an_accumulator_gets_the_arrivals_in_the_waiting_thread(scheduler):
    batch = each_elem(scheduler, [(x,) for x in range(4)], 2, accumulator=list)
    first, second = (r for _, r in scheduler.take(batch, most=100).records)
    scheduler.file(answer(first))
    assert not scheduler.wait(batch, None)
    assert scheduler.arrivals(batch) == [(0, 0), (1, 10)]
    assert scheduler.arrivals(batch) == []  # taken once
    assert scheduler.wait(batch, time.monotonic() + 1, tag=1)  # element 1 is in
    scheduler.file(answer(second))
    assert scheduler.wait(batch, None)
    assert scheduler.arrivals(batch) == [(2, 20), (3, 30)]
    assert (batch.done, batch.total) == (4, 4)


def test_wait_times_out_and_reports_a_broken_sleigh(scheduler):
    batch = each_elem(scheduler, [(1,)], 1)
    scheduler.take(batch, most=100)
    deadline = time.monotonic() + 0.05
    with pytest.raises(TimeoutError, match="0 of 1 results came in time"):
        while True:
            scheduler.wait(batch, deadline)
    waiting = each_elem(scheduler, [(1,)], 1)
    broken = scheduler.break_down("the workspace is gone")
    assert batch in broken and waiting in broken
    with pytest.raises(SleighError, match="the workspace is gone"):
        batch.check()
    assert scheduler.failure == "the workspace is gone"


def test_a_waiting_thread_wakes_when_the_result_is_filed(scheduler):
    batch = each_elem(scheduler, [(1,)], 1)
    [(_, record)] = scheduler.take(batch, most=100).records
    threading.Timer(0.05, scheduler.file, (answer(record),)).start()
    started = time.monotonic()
    while not scheduler.wait(batch, started + 5):
        pass
    assert batch.ordered() == [10]


# ---------------------------------------------------------------------------- cancelling

def test_cancelled_calls_are_forgotten_and_their_results_ignored(scheduler):
    batch = each_elem(scheduler, [(x,) for x in range(4)], 1, window=2)
    first = scheduler.take(batch, most=100).records[0][1]
    other = each_elem(scheduler, [(1,)], 1)
    assert scheduler.cancel([batch]) == [batch.id]
    assert scheduler.cancel([batch]) == []  # once
    assert batch.finished and batch.state == "cancelled" and batch.source is None
    assert scheduler.take(batch, most=100).records == []
    assert scheduler.file(answer(first)) is None
    assert scheduler.wait(batch, None)
    with pytest.raises(SleighError, match="was cancelled"):
        batch.check()
    assert scheduler.cancelled_ids() == [batch.id]
    assert scheduler.running() == [other]


def test_a_closed_scheduler_opens_no_call_and_fails_the_running_ones(scheduler):
    running = each_elem(scheduler, [(1,)], 1)
    assert scheduler.close() == [running]
    with pytest.raises(SleighError, match="stopped"):
        each_elem(scheduler, [(1,)], 1)
    stopped = SleighError("the sleigh was stopped")
    scheduler.fail([running], stopped)
    assert running.finished and running.state == "failed"
    with pytest.raises(SleighError, match="stopped"):
        running.check()


# ---------------------------------------------------------------------------- workers

def test_the_roster_follows_hellos(scheduler):
    assert scheduler.joined(hello(1)) == 1
    assert scheduler.joined(hello(0)) == 2
    assert scheduler.ranks() == [0, 1] and scheduler.joins(1) == 1
    assert [w["pid"] for w in scheduler.workers()] == [100, 101]
    assert scheduler.wait_joined(range(2), time.monotonic()) == 2
    assert scheduler.wait_joined(range(3), time.monotonic() + 0.01) == 2
    scheduler.joined(hello(1, "farewell@1.replacement"))  # the same rank again
    assert scheduler.joins(1) == 2 and scheduler.worker(1)["pid"] == 101


def each_worker(scheduler: Scheduler):
    """An eachWorker call as the master opens one: an element per rank on the roster, each
    in that worker's own variable."""
    ranks = scheduler.ranks()
    batch = scheduler.open("f", KEY, len(ranks), targets=ranks,
                           records=lambda b: own_records(b, KEY, ranks, (7,)))
    return batch, dict(scheduler.take(batch, most=100).records)


def test_each_worker_sends_one_task_per_worker_to_its_own_variable(scheduler):
    for rank in range(3):
        scheduler.joined(hello(rank))
    batch, sent = each_worker(scheduler)
    assert sorted(sent) == ["task@0", "task@1", "task@2"]
    assert [record.items for record in sent.values()] == [[(7,)]] * 3
    for var, record in sent.items():
        scheduler.file(answer(record, rank=int(var[5:])))
    assert batch.ordered() == [70, 70, 70]


def test_a_worker_that_leaves_is_left_out_of_each_worker(scheduler):
    for rank in range(3):
        scheduler.joined(hello(rank))
    batch, sent = each_worker(scheduler)
    scheduler.file(answer(sent["task@0"], rank=0))
    assert not scheduler.left(1, "farewell@1.other-session")  # not the worker on the roster
    assert scheduler.ranks() == [0, 1, 2]
    assert scheduler.left(1, "farewell@1.s")
    assert scheduler.ranks() == [0, 2] and not batch.finished
    assert batch.total == 2 and batch.in_flight() == 1
    scheduler.file(ResultEntry(batch.id, 2, 2, ["two"]))
    assert batch.finished and batch.ordered() == [70, "two"]
    assert not scheduler.left(1, "farewell@1.s")  # once


def test_a_worker_leaving_completes_a_call_waiting_only_for_it(scheduler):
    for rank in range(2):
        scheduler.joined(hello(rank))
    batch, sent = each_worker(scheduler)
    scheduler.file(answer(sent["task@1"], rank=1))
    scheduler.left(0, "farewell@0.s")
    assert batch.finished and batch.ordered() == [70]
    assert scheduler.status(False).batches == 0


def test_a_departure_leaves_other_calls_alone(scheduler):
    scheduler.joined(hello(0))
    scheduler.joined(hello(1))
    batch = each_elem(scheduler, [(x,) for x in range(4)], 2)
    scheduler.take(batch, most=100)
    scheduler.left(1, "farewell@1.s")
    assert batch.total == 4 and batch.in_flight() == 4  # the broker returns its tasks


def test_deaths_are_counted(scheduler):
    scheduler.died()
    scheduler.died()
    assert scheduler.status(True) == scheduler.status(True)._replace(deaths=2, stopped=True)


# ---------------------------------------------------------------------------- observers

def test_observers_see_the_present_and_then_the_news(scheduler):
    scheduler.joined(hello(0))
    running = each_elem(scheduler, [(x,) for x in range(2)], 1)
    seen: list = []
    subscription = scheduler.subscribe(seen.append)
    assert seen == [WorkerJoined(0, hello(0).info),
                    CallProgress(running.id, "f", "running", 0, 0, 2)]
    seen.clear()
    first, second = (r for _, r in scheduler.take(running, most=100).records)
    scheduler.file(answer(first, rank=0))
    scheduler.joined(hello(1))
    scheduler.file(answer(second, rank=1))
    cancelled = each_elem(scheduler, [(1,)], 1)
    scheduler.cancel([cancelled])
    scheduler.left(1, "farewell@1.s")
    assert seen == [
        CallProgress(running.id, "f", "running", 0, 2, 2),  # all sent: the total is known
        CallProgress(running.id, "f", "running", 1, 2, 2, rank=0, added=1),
        WorkerJoined(1, hello(1).info),
        CallProgress(running.id, "f", "done", 2, 2, 2, rank=1, added=1),
        CallProgress(cancelled.id, "f", "running", 0, 0, 1),
        CallProgress(cancelled.id, "f", "cancelled", 0, 0, 1),
        WorkerLeft(1, hello(1).info),
    ]
    subscription.close()
    each_elem(scheduler, [(1,)], 1)
    assert len(seen) == 7  # no more news after close


def test_a_failing_observer_is_logged_and_the_scheduler_goes_on(scheduler, caplog):
    def broken(event):
        raise RuntimeError("observer bug")

    with scheduler.subscribe(broken), caplog.at_level(logging.ERROR, "workbench.sleigh"):
        batch = each_elem(scheduler, [(1,)], 1)
    assert "a sleigh observer failed" in caplog.text
    assert batch.state == "running"
    each_elem(scheduler, [(1,)], 1)
    assert caplog.text.count("RuntimeError: observer bug") == 1  # unsubscribed by the with


# ---------------------------------------------------------------------------- functions

def test_unused_function_specs_beyond_the_limit_are_forgotten(scheduler, monkeypatch):
    monkeypatch.setattr(scheduler_module, "FUNCTIONS_KEPT", 2)
    assert not scheduler.knows_function("a")
    assert scheduler.function_stored("a") == []
    batch = scheduler.open("f", "a", 1)  # "a" is in use
    assert scheduler.function_stored("b") == []
    assert scheduler.function_stored("c") == ["b"]  # the oldest unused one
    assert scheduler.knows_function("a") and scheduler.knows_function("c")
    scheduler.file(answer(TaskRecord(batch.id, 0, "a", [(1,)])))  # "a" is free again
    assert scheduler.function_stored("d") == ["a"]


# ---------------------------------------------------------------------------- retries

def test_a_hand_that_came_back_from_a_dead_worker_is_split():
    one = TaskRecord(7, 0, KEY, [(1,)])
    chunk = TaskRecord(7, 10, KEY, [(1,), (2,), (3,)], deaths=1)
    assert not must_split([(chunk, 0), (one, 0)])  # nobody died holding it: run it
    assert not must_split([(one, 1)])  # one element alone: run it (or call it poison)
    assert must_split([(chunk, 1)])
    assert must_split([(one, 1), (one, 0)])
    assert must_split([(None, 1), (one, 0)])  # an unreadable record does not hide the rest
    parts = split_suspects(chunk, returns=1)
    assert parts == [TaskRecord(7, 10, KEY, [(1,)], None, 2),
                     TaskRecord(7, 11, KEY, [(2,)], None, 2),
                     TaskRecord(7, 12, KEY, [(3,)], None, 2)]


def test_a_record_that_killed_too_many_workers_is_poison():
    record = TaskRecord(7, 3, KEY, [(1,)], deaths=DEATHS_LIMIT - 2)
    assert poisoned(record, returns=0) is None
    assert poisoned(record, returns=1) is None
    assert poisoned(record, returns=2) == DEATHS_LIMIT
    assert poisoned(record._replace(deaths=DEATHS_LIMIT), returns=0) == DEATHS_LIMIT


def test_records_travel_as_plain_tuples():
    record = TaskRecord(7, 3, KEY, [(1,)])
    assert read_record(tuple(record)) == record and type(read_record(tuple(record))) is TaskRecord
    entry = ResultEntry(7, 3, 1, [10])
    assert type(read_entry(tuple(entry))) is ResultEntry
    assert type(read_entry(tuple(hello(2)))) is Hello


def test_a_call_of_one_argument_sends_the_arguments_bare():
    [(_, plain), (_, bare)] = [next(records(1, KEY, items, even_chunks(2, 2), bare=flag))
                               for items, flag in (([(1,), ((2, 3),)], False),
                                                   ([1, (2, 3)], True))]
    assert bare.items == [1, (2, 3)] and bare.bare and not plain.bare
    assert [bare.arguments(i) for i in range(2)] == [plain.arguments(i) for i in range(2)] \
        == [(1,), ((2, 3),)]
    assert read_record(tuple(bare)) == bare
    assert all(part.bare for part in split_suspects(bare, 1))


# ---------------------------------------------------------------------------- chunking


def covers(bounds: list[tuple[int, int]], count: int) -> bool:
    """Chunks that follow one another from 0 to ``count``, none empty."""
    return (bounds[0][0] == 0 and bounds[-1][1] == count and all(
        start < stop for start, stop in bounds) and all(
        a[1] == b[0] for a, b in zip(bounds, bounds[1:])))


def test_guided_chunks_shrink_and_are_planned_for_a_few_workers_whatever_the_pool():
    small = list(guided_chunks(20_000, 2))
    assert covers(small, 20_000) and small[0] == (0, 2_500)
    sizes = [stop - start for start, stop in small]
    assert sizes == sorted(sizes, reverse=True)
    assert min(sizes[:-1]) == 2_500 // 8 + 1 and len(small) < 30  # no tail of tiny records
    # a hundred workers get the records of CHUNK_WORKERS: tiny tasks cost few messages
    assert list(guided_chunks(20_000, 100)) == list(guided_chunks(20_000, CHUNK_WORKERS))
    assert len(list(guided_chunks(20_000, 100))) < 200
    assert list(guided_chunks(3, 100)) == [(0, 1), (1, 2), (2, 3)]


def test_the_rest_of_a_slow_record_goes_back_in_pieces_of_a_hand_each():
    # tasks of 1 ms: a hand's worth of elements per piece
    per_hand = int(HAND_SECONDS / 0.001)
    pieces = list(paced_chunks(1_000, 0.001, workers=100))
    assert covers(pieces, 1_000) and {stop - start for start, stop in pieces[:-1]} == {per_hand}
    # tasks of a second: one element per piece, but never more than 4 pieces per worker
    assert list(paced_chunks(5, 1.0, workers=100)) == [(i, i + 1) for i in range(5)]
    many = list(paced_chunks(1_000, 1.0, workers=10))
    assert covers(many, 1_000) and len(many) == 40
    # tiny tasks (or no pace known): one piece
    assert list(paced_chunks(1_000, 1e-7, workers=10)) == [(0, 1_000)]
    assert list(paced_chunks(1_000, 0.0, workers=10)) == [(0, 1_000)]
