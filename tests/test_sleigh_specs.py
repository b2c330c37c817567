"""The cache of function specs (``workbench.sleigh.specs``): a function is pickled once while
nothing its pickle is made from can have changed, and again whenever something could have."""

from __future__ import annotations

import functools
import json
import operator

from workbench.sleigh import tasks
from workbench.sleigh.specs import SpecCache


def closure(step):
    return lambda x: x + step


def test_a_function_made_of_immutable_parts_is_pickled_once():
    cache = SpecCache()
    for fn in (closure(1), functools.partial(operator.add, 1), abs, json.dumps,
               lambda x: json.dumps(x)):
        first = cache.pack(fn)
        assert first == tasks.pack_function(fn)
        assert cache.pack(fn)[1] is first[1]  # the same bytes: not pickled again


def test_a_rebound_captured_variable_or_global_makes_a_new_spec():
    cache = SpecCache()
    step = 1

    def add(x):
        return x + step

    before = cache.pack(add)
    step = 2
    after = cache.pack(add)
    assert after != before and after == tasks.pack_function(add)
    namespace = {"__name__": "__main__", "k": 1}
    exec("def f(x):\n    return x + k\n", namespace)  # as a notebook defines it
    f = namespace["f"]
    first = cache.pack(f)
    namespace["k"] = 5
    assert cache.pack(f) != first and cache.pack(f) == tasks.pack_function(f)
    del namespace["k"]
    assert cache.pack(f) == tasks.pack_function(f)


def test_what_could_change_in_place_is_pickled_every_time():
    box = [1]
    table = {"a": 1}
    cache = SpecCache()
    for fn in (lambda: box[0], lambda: table["a"], functools.partial(operator.add, box),
               box.append, lambda x, d={}: d, closure(box)):
        assert cache.pack(fn)[1] is not cache.pack(fn)[1]  # pickled each time
        assert cache.pack(fn) == tasks.pack_function(fn)
    read = closure(box)
    first = cache.pack(read)
    box.append(2)
    assert cache.pack(read) != first


def test_fixed_arguments_and_permutations_are_part_of_the_spec():
    cache = SpecCache()
    first = cache.pack(operator.sub, (1,), [1, 0])
    assert cache.pack(operator.sub, (1,), [1, 0])[1] is first[1]
    assert cache.pack(operator.sub, (2,), [1, 0]) == tasks.pack_function(operator.sub, (2,),
                                                                          [1, 0])
    fixed = [[1]]
    assert cache.pack(len, fixed)[0] == tasks.pack_function(len, fixed)[0]
    fixed[0].append(2)
    assert cache.pack(len, fixed)[0] == tasks.pack_function(len, fixed)[0]

