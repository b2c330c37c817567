"""The key-value operations of the broker state: memcached's verbs on workspace variables.

An entry is a SINGLE variable of a workspace, so ``listVars``, the magics and the dashboards show
key-value entries like any other variable, and a NetWorkSpaces ``find`` waiting on a key wakes
when a key-value client sets it. Each operation runs whole inside one request: nothing else
happens between its test and its write, which is what makes add, cas and incr atomic.

Expiry: an entry past its deadline is treated as absent by every operation that touches it, and
a heap of deadlines lets ``reap_expired`` remove due entries without scanning anything else.

A mixin of ``BrokerState``, like ``operations``.
"""

from __future__ import annotations

import heapq
import struct

from ...protocol import (
    DESCRIPTOR_SIZE, KV_ITEM, KV_RECORD, VERSION_SHIFT, Kind, ProtocolError, Status,
    parse_descriptor, reply_head,
)
from .requests import OpError, arity
from .sessions import Session
from .variables import SINGLE, Value, Variable
from .workspaces import Workspace

#: memcached refuses to incr a value longer than a 64-bit number's 20 digits.
_MAX_DIGITS = 20
_WRAP = 1 << 64
_VERSION = struct.Struct("<Q")
_MIN_DEADLINES_LIMIT = 1024
_STORE_HOWS = frozenset((b"set", b"add", b"replace", b"append", b"prepend", b"cas", b"swap"))
#: Value kinds whose payload is the text of a number when it is one (see protocol.Kind).
_NUMERIC_KINDS = (Kind.BYTES, Kind.TEXT, Kind.INT)
_INT = Kind.INT


def version_of(var: Variable, value: Value) -> int:
    return var.id << VERSION_SHIFT | value.seq


class KeyValue:
    # ---------------------------------------------------------------- lookup and expiry

    def _kv_space(self, arg: bytes) -> Workspace:
        """The entries' workspace, created (persistent, unowned) on first use."""
        name = self._name(arg, "workspace")
        ws = self.spaces.by_name.get(name)
        if ws is None:
            ws = self._create_workspace(name, persistent=True)
        return ws

    def _kv_entry(self, ws: Workspace, name: str) -> Variable | None:
        """The live variable called ``name`` (expired: removed, None); only SINGLE ones."""
        var = self._unexpired(ws, name)
        if var is None:
            return None
        if var.mode != SINGLE:
            if var.mode_fixed:
                raise OpError(Status.BAD_REQUEST,
                              f"{name!r} is a {var.mode} variable of workspace {ws.name!r}, not "
                              "a key-value entry: use another key, or delete the variable")
            var.set_mode(SINGLE)  # only created by a waiting reader: it may become an entry
        return var

    def _unexpired(self, ws: Workspace, name: str) -> Variable | None:
        """The variable ``name`` of ``ws``, after removing its value if its deadline passed."""
        var = ws.variables.get(name)
        if var is not None and var.expires is not None and var.expires <= self.now:
            self._kv_expire(var)
            var = ws.variables.get(name)
        return var

    def _kv_value(self, var: Variable | None) -> Value | None:
        return var.values[0] if var is not None and var.values else None

    def _set_deadline(self, var: Variable, ttl: float | None) -> None:
        """ttl: None keeps the deadline, 0 removes it, otherwise seconds from now."""
        if ttl is None:
            return
        if ttl == 0:
            var.expires = None
            return
        var.expires = self.now + ttl if ttl > 0 else self.now - 1.0
        deadlines = self.deadlines
        heapq.heappush(deadlines, (var.expires, var.id, var))
        if len(deadlines) > self.deadlines_limit:
            # Rewrites leave their old deadlines behind until those pass; a key rewritten
            # often with a long ttl would pile them up, so drop the stale ones now and then.
            deadlines[:] = {entry[:2]: entry for entry in deadlines
                            if entry[2].live and entry[2].expires == entry[0]}.values()
            heapq.heapify(deadlines)
            self.deadlines_limit = max(_MIN_DEADLINES_LIMIT, 2 * len(deadlines))

    def _kv_expire(self, var: Variable) -> None:
        """An entry's time is up: its value goes, and the variable too unless someone waits."""
        var.expires = None
        for value in var.values:
            self._discard(value)
        var.values.clear()
        self.counters["expired"] += 1
        self._kv_forget(var)

    def _kv_forget(self, var: Variable) -> None:
        ws = var.workspace
        if not var.fetchers and not var.finders and ws.variables.get(var.name) is var:
            del ws.variables[var.name]
            var.live = False
        if self.watched:
            self._event(ws.name, "deleted", var.name)

    def reap_expired(self, now: float) -> None:
        """Remove the entries whose deadline has passed: O(log n) each, no scan."""
        deadlines = self.deadlines
        while deadlines and deadlines[0][0] <= now:
            deadline, _, var = heapq.heappop(deadlines)
            if var.live and var.expires == deadline:  # else touched, rewritten or deleted
                self._kv_expire(var)

    # ---------------------------------------------------------------- writes

    def _kv_write(self, ws: Workspace, name: str, var: Variable | None, value: Value) -> Variable:
        """Make ``value`` the entry's only value; a waiting fetcher or finder gets it first."""
        if var is None:
            var = self._new_variable(ws, name, SINGLE)
        else:
            var.mode_fixed = True
            for old in var.values:
                self._discard(old)
            var.values.clear()
        var.stamp(value)
        self.memory += value.size
        self._offer(var, value)
        return var

    def _ttl(self, arg: bytes) -> float:
        try:
            ttl = float(arg)
        except ValueError:
            raise ProtocolError(f"ttl {arg!r} is not a number") from None
        if ttl != ttl or ttl in (float("inf"), float("-inf")):
            raise ProtocolError(f"ttl {arg!r} is not a finite number")
        return ttl

    def _kv_store(self, session: Session, peer: bytes, request_id: int, args: list,
                  frames: list) -> None:
        arity(args, 5)
        ws = self._kv_space(args[0])
        name = self._name(args[1], "key")
        how, ttl = args[2], self._ttl(args[3])
        if how not in _STORE_HOWS:
            raise ProtocolError(f"unknown store condition {how!r}")
        value = self._incoming_value(session, frames)
        var = self._kv_entry(ws, name)
        old = self._kv_value(var)
        self.counters["kv_sets"] += 1
        if how == b"add":
            if old is not None:
                return self._refuse(peer, request_id, value, Status.EXISTS)
        elif how == b"cas":
            if old is None:
                return self._refuse(peer, request_id, value, Status.MISSING)
            if version_of(var, old) != int(args[4] or b"0"):
                return self._refuse(peer, request_id, value, Status.EXISTS)
        elif how != b"set" and old is None:  # replace, append, prepend, swap
            return self._refuse(peer, request_id, value, Status.MISSING)
        if how == b"append" or how == b"prepend":
            value = self._concatenate(old, value, how == b"append")
            ttl = None  # memcached keeps the entry's expiry and flags
        if how == b"swap":
            self._reply_value(peer, request_id, var, old, session)  # sent before it goes
        var = self._kv_write(ws, name, var, value)
        self._set_deadline(var, ttl)
        if how != b"swap":
            self._reply(peer, request_id, Status.OK,
                        _VERSION.pack(version_of(var, value)) if value.seq else b"")

    def _refuse(self, peer: bytes, request_id: int, value: Value, status: int) -> None:
        self._discard_unstored(value)
        self._reply(peer, request_id, status)

    def _discard_unstored(self, value: Value) -> None:
        if value.shared is not None:  # the broker took the file over: remove it
            self.shared_in_use.discard(value.shared.partition(b":")[0])
            self.released.append((value.shared, False))

    def _concatenate(self, old: Value, new: Value, append: bool) -> Value:
        """One value of old's kind whose payload is old's then new's (or new's then old's).
        Only whole raw values join: bytes and text, and digits to a number."""
        firsts = []
        for value in (old, new):
            first = bytes(self._plain_frames(value)[0])
            firsts.append(first)
        (old_kind, *old_rest), (new_kind, *new_rest) = (parse_descriptor(f) for f in firsts)
        if (old_rest != [0, 0] or new_rest != [0, 0] or old_kind not in _NUMERIC_KINDS
                or new_kind not in _NUMERIC_KINDS or (old_kind == _INT) != (new_kind == _INT)):
            self._discard_unstored(new)
            raise OpError(Status.BAD_VALUE,
                          "append and prepend join small raw values only: bytes or text to "
                          "bytes or text, an int to an int (not pickled, compressed or "
                          "64 KiB and more)")
        self._discard_unstored(new)
        old_data, new_data = firsts[0][DESCRIPTOR_SIZE:], firsts[1][DESCRIPTOR_SIZE:]
        data = firsts[0][:DESCRIPTOR_SIZE] + (old_data + new_data if append
                                              else new_data + old_data)
        return Value([data], len(data))

    def _plain_frames(self, value: Value) -> list:
        return value.frames if value.shared is None else self.files.materialize(value.frames)

    def _kv_incr(self, session: Session, peer: bytes, request_id: int, args: list,
                 frames: list) -> None:
        arity(args, 4)
        ws = self._kv_space(args[0])
        name = self._name(args[1], "key")
        if args[2] not in (b"incr", b"decr") or not args[3].isdigit():
            raise OpError(Status.BAD_VALUE,
                          f"{args[2].decode(errors='replace')} needs a delta of decimal digits, "
                          f"got {args[3].decode(errors='replace')!r}")
        var = self._kv_entry(ws, name)
        old = self._kv_value(var)
        if old is None:
            return self._reply(peer, request_id, Status.MISSING)
        kind, flags, nextra = parse_descriptor(old.frames[0])
        digits = bytes(old.frames[0][DESCRIPTOR_SIZE:])
        if (kind not in _NUMERIC_KINDS or flags or nextra or not digits.isdigit()
                or len(digits) > _MAX_DIGITS):
            raise OpError(Status.BAD_VALUE,
                          f"cannot {args[2].decode()} {name!r}: its value is not a decimal "
                          "number (store it as an int or as a string of digits)")
        delta = int(args[3])
        number = int(digits) + delta if args[2] == b"incr" else max(0, int(digits) - delta)
        number %= _WRAP  # incr wraps at 2**64, as memcached's
        data = b"%d" % number
        value = Value([bytes(old.frames[0][:DESCRIPTOR_SIZE]) + data], DESCRIPTOR_SIZE + len(data))
        self._kv_write(ws, name, var, value)
        self._reply(peer, request_id, Status.OK, data)

    # ---------------------------------------------------------------- reads and removals

    def _kv_get(self, session: Session, peer: bytes, request_id: int, args: list,
                frames: list) -> None:
        arity(args, 2)
        ws = self._kv_space(args[0])
        var = self._kv_entry(ws, self._name(args[1], "key"))
        value = self._kv_value(var)
        self.counters["kv_gets"] += 1
        if value is None:
            self.counters["kv_misses"] += 1
            return self._reply(peer, request_id, Status.MISSING)
        self._reply_value(peer, request_id, var, value, session)

    def _kv_delete(self, session: Session, peer: bytes, request_id: int, args: list,
                   frames: list) -> None:
        arity(args, 2)
        ws = self._kv_space(args[0])
        found = self._kv_remove(ws, self._name(args[1], "key"))
        self._reply(peer, request_id, Status.OK if found else Status.MISSING)

    def _kv_remove(self, ws: Workspace, name: str) -> bool:
        var = self._kv_entry(ws, name)
        if var is None or not var.values:
            return False
        for value in var.values:
            self._discard(value)
        var.values.clear()
        var.expires = None
        self._kv_forget(var)
        return True

    def _kv_touch(self, session: Session, peer: bytes, request_id: int, args: list,
                  frames: list) -> None:
        arity(args, 3)
        ws = self._kv_space(args[0])
        var = self._kv_entry(ws, self._name(args[1], "key"))
        if self._kv_value(var) is None:
            return self._reply(peer, request_id, Status.MISSING)
        self._set_deadline(var, self._ttl(args[2]))
        self._reply(peer, request_id)

    def _kv_flush(self, session: Session, peer: bytes, request_id: int, args: list,
                  frames: list) -> None:
        arity(args, 1)
        ws = self._kv_space(args[0])
        for var in ws.variables.values():
            self._destroy_variable(var, Status.VARIABLE_DELETED,
                                   f"variable {var.name!r} was flushed")
            if self.watched:
                self._event(ws.name, "deleted", var.name)
        ws.variables.clear()
        self._reply(peer, request_id)

    # ---------------------------------------------------------------- several keys at once

    def _kv_get_multi(self, session: Session, peer: bytes, request_id: int, args: list,
                      frames: list) -> None:
        if not args:
            raise ProtocolError("get_multi without a workspace")
        ws = self._kv_space(args[0])
        body, extra = [], []
        for index, arg in enumerate(args[1:]):
            var = self._kv_entry(ws, self._name(arg, "key"))
            value = self._kv_value(var)
            if value is None:
                continue
            value_frames = self._frames_for(peer, request_id, value, session)
            body.append(KV_RECORD.pack(index, version_of(var, value), len(value_frames[0])))
            body.append(bytes(value_frames[0]))
            extra.extend(value_frames[1:])
        self.counters["kv_gets"] += len(args) - 1
        self.counters["kv_misses"] += len(args) - 1 - len(body) // 2
        self.outbox.append(
            (peer, [reply_head(Status.OK, request_id, len(extra), b"".join(body)), *extra]))

    def _kv_set_multi(self, session: Session, peer: bytes, request_id: int, args: list,
                      frames: list) -> None:
        arity(args, 2)
        ws = self._kv_space(args[0])
        ttl = self._ttl(args[1])
        items = _set_multi_items(frames[0], frames[1:])  # all parsed before anything is stored
        failed = []
        for index, (key, value_frames) in enumerate(items):
            try:
                name = self._name(key, "key")
                first = value_frames[0]
                if len(value_frames) == 1 and not first[1]:  # small and plain: the usual case
                    value = Value(value_frames, len(first))
                    if self.memory + value.size > self.limits.max_memory:
                        raise OpError(Status.NO_MEMORY, "memory cap")
                else:
                    value = self._incoming_value(session, value_frames)
                var = self._kv_write(ws, name, self._kv_entry(ws, name), value)
                if ttl:
                    self._set_deadline(var, ttl)
                else:
                    var.expires = None
            except OpError:
                failed.append(b"%d" % index)
        self.counters["kv_sets"] += len(items)
        self._reply(peer, request_id, Status.OK, b",".join(failed))

    def _kv_delete_multi(self, session: Session, peer: bytes, request_id: int, args: list,
                         frames: list) -> None:
        if not args:
            raise ProtocolError("delete_multi without a workspace")
        ws = self._kv_space(args[0])
        deleted = sum(self._kv_remove(ws, self._name(arg, "key")) for arg in args[1:])
        self._reply(peer, request_id, Status.OK, b"%d" % deleted)

    def _kv_compare_swap(self, session: Session, peer: bytes, request_id: int, args: list,
                         frames: list) -> None:
        arity(args, 3)
        ws = self._kv_space(args[0])
        name = self._name(args[1], "key")
        ttl = self._ttl(args[2])
        split = 1 + parse_descriptor(frames[0])[2]
        if split >= len(frames):
            raise ProtocolError("compare_and_swap needs a new value and a comparand")
        comparand = frames[split:]
        if 1 + parse_descriptor(comparand[0])[2] != len(comparand):
            raise ProtocolError("compare_and_swap comparand frames do not match its descriptor")
        var = self._kv_entry(ws, name)
        old = self._kv_value(var)
        if old is None:
            return self._reply(peer, request_id, Status.MISSING)
        self._reply_value(peer, request_id, var, old, session)
        if _same_payload(self._plain_frames(old), comparand):
            var = self._kv_write(ws, name, var, self._incoming_value(session, frames[:split]))
            self._set_deadline(var, ttl)



def _same_payload(frames: list, other: list) -> bool:
    if len(frames) != len(other):
        return False
    return all(bytes(a) == bytes(b) for a, b in zip(frames, other))


def _set_multi_items(blob: bytes, extra: list) -> list[tuple[bytes, list]]:
    """A KV_SET_MULTI request's records -> [(key, value frames)], checked to be whole."""
    items = []
    unpack_item, item_size = KV_ITEM.unpack_from, KV_ITEM.size
    offset, end, next_extra = 0, len(blob), 0
    while offset < end:
        if offset + item_size > end:
            raise ProtocolError("set_multi records are truncated")
        key_length, first_length = unpack_item(blob, offset)
        key_end = offset + item_size + key_length
        first_end = key_end + first_length
        if first_end > end or first_length < DESCRIPTOR_SIZE:
            raise ProtocolError("set_multi records are truncated")
        first = blob[key_end:first_end]
        nextra = first[2] | first[3] << 8  # the descriptor's count of extra frames
        if nextra:
            value_frames = [first, *extra[next_extra:next_extra + nextra]]
            next_extra += nextra
            if len(value_frames) != nextra + 1:
                raise ProtocolError("set_multi records announce more frames than arrived")
        else:
            value_frames = [first]
        items.append((blob[offset + item_size:key_end], value_frames))
        offset = first_end
    if next_extra != len(extra):
        raise ProtocolError("set_multi has more value frames than its records announce")
    return items
