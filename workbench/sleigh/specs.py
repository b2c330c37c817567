"""Function specs packed once per function, not once per call: ``SpecCache``.

Every call (a submit, a map) names its function spec by the hash of its pickle
(``tasks.pack_function``), so that a spec is stored once whatever calls use it. Pickling costs
15-35 µs (cloudpickle, recording source lines), more than the rest of a submit. The cache keeps
the last pickle of each function and reuses it while nothing it was made from can have changed.

What a pickle depends on, by the way cloudpickle makes it:

* a function it pickles **by reference** (importable by module and name, not registered to go
  by value) and a module-level C function: only its name, looked up where it is unpickled;
* a function it pickles **by value** (a lambda, a closure, what ``__main__`` or a notebook
  defines): its code, names, defaults, the contents of its closure cells and the globals its
  code names (nested code too), each pickled by value in turn;
* a ``functools.partial``: its function, arguments and keywords.

The cache takes a *fingerprint* of those parts: the objects themselves, kept alive by the
cache, compared by identity. It caches only when every part is immutable all the way down
(numbers, strings, bytes, None, tuples and frozensets of those, and modules, classes and
functions that go by reference), so the same objects mean the same pickle. A captured list, a
dict, a user's object, a helper that itself goes by value: the function is pickled again at
every call, as without the cache. A user who rebinds a global or a captured variable gets a
new object there, hence a new pickle: ``k = 2`` after ``f = lambda x: x + k`` ran with
``k = 1`` runs with 2.
"""

from __future__ import annotations

import functools
import operator
import threading
import types
from typing import Any, Callable, NamedTuple, Sequence

import cloudpickle

from . import tasks

#: Functions whose last spec is kept.
SPECS_KEPT = 256

# cloudpickle's own test of whether it pickles a function, class or module by name. Without it
# (another cloudpickle), nothing is taken to go by reference: functions that do are cached
# only when their globals are immutable, as if they went by value.
_by_reference: Callable[[Any], bool] | None = getattr(
    getattr(cloudpickle, "cloudpickle", None), "_should_pickle_by_reference", None)

_IMMUTABLE = frozenset({int, float, complex, bool, str, bytes, type(None), type(Ellipsis),
                        range, slice, types.CodeType})
_CONTAINERS = (tuple, frozenset)
#: The globals cloudpickle sends with any function it pickles by value.
_BASE_GLOBALS = ("__package__", "__name__", "__path__", "__file__")
_ABSENT = object()  # a global the code names that is not defined (a builtin, or not yet)
_EMPTY_CELL = object()


class Spec(NamedTuple):
    """A packed function spec and what it was packed from."""

    key: str
    data: bytes
    fingerprint: tuple


class SpecCache:
    """The last spec of each function (at most SPECS_KEPT), reused while its fingerprint
    holds. Any thread may use it."""

    def __init__(self) -> None:
        self._specs: dict[Any, Spec] = {}
        self._lock = threading.Lock()

    def pack(self, fn: Callable, fixed: Sequence = (), permute: Sequence[int] | None = None
             ) -> tuple[str, bytes]:
        """-> (key, bytes) of the spec of ``fn`` with ``fixed`` and ``permute``, as
        ``tasks.pack_function`` makes them."""
        parts = fingerprint(fn, fixed, permute)
        if parts is not None:
            try:
                with self._lock:
                    spec = self._specs.get(fn)
            except TypeError:  # unhashable: never cached
                parts = spec = None
            # the cached parts were all immutable: the same objects are the same pickle
            if spec is not None and _same(spec.fingerprint, parts):
                return spec.key, spec.data
        key, data = tasks.pack_function(fn, fixed, permute)
        if parts is not None and all(map(_immutable, parts)):
            with self._lock:
                self._specs.pop(fn, None)
                self._specs[fn] = Spec(key, data, parts)
                if len(self._specs) > SPECS_KEPT:
                    del self._specs[next(iter(self._specs))]
        return key, data


def _same(old: tuple, new: tuple) -> bool:
    return len(old) == len(new) and all(map(operator.is_, old, new))


def fingerprint(fn: Any, fixed: Sequence = (), permute: Sequence[int] | None = None
                ) -> tuple | None:
    """The objects the spec's pickle is made from, or None for a callable the cache does not
    take apart. The spec may be cached only if they are all immutable (``_immutable``)."""
    parts = _callable_parts(fn, 0)
    if parts is None:
        return None
    permute = () if permute is None else permute
    # flat, so that equal arguments given in new lists are still the same objects
    return (len(fixed), *fixed, len(permute) if permute else None, *permute, *parts)


def _callable_parts(fn: Any, depth: int) -> tuple | None:
    cls = type(fn)
    if cls is types.FunctionType:
        return (fn,) if _goes_by_reference(fn) else _function_parts(fn)
    if cls is types.BuiltinFunctionType:  # a C function: by name unless bound to an object
        return (fn, fn.__self__)
    if cls is functools.partial:
        if fn.__dict__ or depth > 2:
            return None
        inner = _callable_parts(fn.func, depth + 1)
        if inner is None:
            return None
        return (*inner, fn.args, *_flat(fn.keywords.items()))
    return None


def _function_parts(fn: types.FunctionType) -> tuple | None:
    """A function cloudpickle pickles by value: its code, names, defaults, closure and the
    globals its code names."""
    if fn.__dict__ or fn.__annotations__:
        return None
    namespace = fn.__globals__
    return (fn.__code__, fn.__name__, fn.__qualname__, fn.__module__, fn.__doc__,
            fn.__defaults__, *_flat((fn.__kwdefaults__ or {}).items()),
            *map(_cell_contents, fn.__closure__ or ()),
            *[namespace.get(name, _ABSENT) for name in code_globals(fn.__code__)])


def _cell_contents(cell: types.CellType) -> Any:
    try:
        return cell.cell_contents
    except ValueError:  # not bound yet
        return _EMPTY_CELL


def _flat(pairs: tuple) -> tuple:
    return tuple(item for pair in pairs for item in pair)


@functools.lru_cache(maxsize=1024)
def code_globals(code: types.CodeType) -> tuple[str, ...]:
    """The names ``code`` and the code nested in it may look up as globals (what cloudpickle
    sends of the function's globals), in a fixed order."""
    names = dict.fromkeys(code.co_names)
    for const in code.co_consts:
        if type(const) is types.CodeType:
            names.update(dict.fromkeys(code_globals(const)))
    names.update(dict.fromkeys(_BASE_GLOBALS))
    return tuple(names)


def _immutable(value: Any, depth: int = 0) -> bool:
    """Whether ``value`` pickles the same for as long as it is the same object."""
    cls = type(value)
    if cls in _IMMUTABLE or value is _ABSENT or value is _EMPTY_CELL:
        return True
    if cls in _CONTAINERS:
        return depth < 4 and all(_immutable(item, depth + 1) for item in value)
    if cls is types.ModuleType:
        return _goes_by_reference(value)
    if cls is types.FunctionType or isinstance(value, type):
        return _goes_by_reference(value)
    if cls is types.BuiltinFunctionType:  # by name, unless bound to an object
        owner = value.__self__
        return owner is None or type(owner) is types.ModuleType
    return False


def _goes_by_reference(obj: Any) -> bool:
    if _by_reference is None:
        return False
    if type(obj) is types.ModuleType and obj.__name__ == "__main__":
        return False
    try:
        return bool(_by_reference(obj))
    except Exception:  # noqa: BLE001 - cloudpickle could not tell: pickle it every time
        return False

