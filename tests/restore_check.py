"""What a broker restored from its change records must hold (``broker.state.restore``): the
persistent state of the original as a restart leaves it, read from the original's internals
(for this comparison only) the way ``change_replica.state_view`` reads them.

A restart ends every session: a non-persistent workspace with an owner is purged, a leased value
goes back to the head of its variable (FIFO: its place in store order; LIFO: on top, oldest
first; SINGLE: the newest, only into an empty variable; MULTI: anywhere), and its count of
returns stays what it was.
"""

from __future__ import annotations

from workbench.broker.state import BrokerState
from workbench.broker.state.pubsub import MQ_WORKSPACE
from workbench.broker.state.restore import restore

from .change_replica import Replica, state_view


def view_after_restart(state: BrokerState) -> dict:
    """``state_view`` of ``state`` as a restart leaves it."""
    view = state_view(state)
    spaces = view["workspaces"]
    for ws in state.spaces.by_name.values():
        if ws.owner is not None and not ws.persistent:
            del spaces[ws.name]
    if MQ_WORKSPACE not in spaces:
        view["queues"] = []
    for variables in (ws["variables"] for ws in spaces.values()):
        for var in variables.values():
            var["held"] = _put_back(var["mode"], var["held"], var["leased"])
            var["leased"] = []
    return view


def _put_back(mode: str, held: list, leased: list) -> list:
    if mode == "fifo" or mode == "multi":
        return sorted([*held, *leased])  # values are (seq, ...): store order
    if mode == "lifo":
        return [*held, *sorted(leased)]
    for value in sorted(leased, reverse=True):  # single: the newest, into an empty variable
        if not held:
            held = [value]
    return held


def next_ids(state: BrokerState) -> dict:
    """The ids a state gives next: the next variable's, and each variable's next sequence."""
    return {"var_id": state.spaces.next_var_id,
            "seqs": {var.id: var.next_seq for ws in state.spaces.by_name.values()
                     for var in ws.variables.values()}}


def check_restore(records: list, original: BrokerState) -> BrokerState:
    """A fresh state restored from ``records`` holds what ``original`` holds after a restart,
    gives the same ids next, counts the same memory; and the records the restore returns,
    appended to ``records``, still rebuild it. -> the restored state."""
    restored = BrokerState()
    report, made = restore(restored, records)
    expected = view_after_restart(original)
    assert state_view(restored) == expected
    expected_ids = next_ids(original)
    expected_ids["seqs"] = {var_id: seq for var_id, seq in expected_ids["seqs"].items()
                            if var_id in next_ids(restored)["seqs"]}
    assert next_ids(restored) == expected_ids
    assert restored.memory.used == sum(value[2] for ws in expected["workspaces"].values()
                                       for var in ws["variables"].values()
                                       for value in var["held"])
    assert report.records == len(records) and not report.misfits
    replica = Replica()
    replica.apply_all([*records, *made])
    assert replica.view() == state_view(restored)
    return restored
