"""The workspace client where NetWorkSpaces' own tests pin it down: ``declare``'s error for an
illegal mode, iterators ending when their variable is deleted, and ``makefile``'s text files
(the cases of the original's test_nws.py and test_file.py, against a real broker)."""

from __future__ import annotations

import io

import pytest

from workbench import (
    DICT, NwsBadRequestException, NwsDeclarationFailedException, NwsIllegalModeException,
    NwsIteratorInvalidException, NwsVariableDeletedException,
)

from .test_client import in_thread, waiting


def test_declare_refuses_an_illegal_mode_with_the_original_value_error(ws):
    with pytest.raises(ValueError, match="illegal mode: garbage") as caught:
        ws.declare("v", "garbage")
    assert isinstance(caught.value, NwsIllegalModeException)
    assert isinstance(caught.value, NwsBadRequestException)  # what was raised before
    assert "v" not in ws.listVars(format=DICT)  # refused before reaching the broker
    with pytest.raises(NwsIllegalModeException):
        ws.declare("v", "__barrier")  # the original server's extension modes do not exist here
    with pytest.raises(TypeError, match="mode must be a string"):
        ws.declare("v", 3)
    ws.declare("v", "fifo")
    with pytest.raises(NwsDeclarationFailedException):
        ws.declare("v", "single")


@pytest.mark.parametrize("make", ["ifind", "ifetch"])
def test_an_iterator_ends_when_its_variable_is_deleted(ws, make):
    """test_nws.py's testIfind and testIfetch: after deleteVar, StopIteration for good."""
    for i in range(10):
        ws.store("v", i)
    it = getattr(ws, make)("v")
    assert [next(it) for _ in range(10)] == list(range(10))
    ws.deleteVar("v")
    with pytest.raises(StopIteration):
        next(it)
    assert list(it) == []
    ws.store("v", 1)  # a new variable of the same name: the stopped iterator stays stopped
    assert list(it) == []
    it.restart()
    assert list(ws.ifindTry("v")) == [1]
    assert it.writeTo(io.BytesIO()) == 0


@pytest.mark.parametrize("make", ["ifind", "ifetch"])
def test_a_waiting_iterator_ends_when_its_variable_is_deleted(ws, other, make):
    it = getattr(ws, make)("v", timeout=10)
    thread, box = in_thread(next, it)
    waiting(ws, "v", **({"finders": 1} if make == "ifind" else {"fetchers": 1}))
    other.deleteVar("v")
    thread.join(10)
    assert isinstance(box.get("error"), StopIteration)


def test_raise_on_delete_keeps_the_broker_errors(ws, other):
    it = ws.ifind("v", timeout=10, raise_on_delete=True)
    thread, box = in_thread(next, it)
    waiting(ws, "v", finders=1)
    other.deleteVar("v")
    thread.join(10)
    assert isinstance(box.get("error"), NwsVariableDeletedException)
    ws.store("w", 1)
    it = ws.ifetchTry("w", raise_on_delete=True)
    ws.store("w", 2)
    assert next(it) == 1
    ws.deleteVar("w")
    ws.store("w", 3)
    with pytest.raises(NwsIteratorInvalidException):
        next(it)


def test_a_try_iterator_over_a_recreated_variable_ends_and_reset_starts_over(ws):
    ws.store("v", 1)
    it = ws.ifindTry("v")
    assert next(it) == 1
    ws.deleteVar("v")
    ws.store("v", 2)
    assert list(it) == []
    it.reset()
    assert list(it) == [2]


# ---------------------------------------------------------------- makefile (test_file.py)

def values(ws, var):
    return list(ws.ifindTry(var))


def test_lines_written_are_values_and_read_back(ws):
    text = "".join(f"{i}\n" for i in range(10))
    with ws.makefile("f", "w") as w:
        assert w.write(text) == len(text)
    assert values(ws, "f") == [f"{i}\n" for i in range(10)]
    assert list(ws.makefile("f")) == [f"{i}\n" for i in range(10)]
    assert ws.makefile("f", "r").read() == text
    r = ws.makefile("f")
    assert [r.readline() for _ in range(10)] == [f"{i}\n" for i in range(10)]
    assert r.readline() == ""
    assert values(ws, "f") == [f"{i}\n" for i in range(10)]  # reading consumes nothing


def test_a_partial_line_waits_for_its_newline_flush_or_close(ws):
    w = ws.makefile("f", "w")
    w.write("hello,")
    assert values(ws, "f") == []
    w.flush()
    assert values(ws, "f") == ["hello,"]
    w.write(" world")
    assert values(ws, "f") == ["hello,"]
    w.write("\n")
    assert values(ws, "f") == ["hello,", " world\n"]
    assert ws.makefile("f").read() == "hello, world\n"
    w.write("tail")
    w.close()
    assert values(ws, "f")[-1] == "tail"


def test_readlines_stops_at_the_last_value_until_reopened(ws):
    w = ws.makefile("f", "w")
    for c in "This is a test":
        w.write(c)
    early = ws.makefile("f")
    assert early.readlines() == []
    w.close()
    assert early.readlines() == []  # it reached the end before the close
    assert ws.makefile("f").readlines() == ["This is a test"]
    w = ws.makefile("f", "w")  # 'w' empties the variable
    lines = ["This is a test\n", "that we get three\n", "lines when we call readline\n"]
    for c in "".join(lines) + "buffered, never written":
        w.write(c)
    assert ws.makefile("f").readlines() == lines


def test_small_reads_and_appends(ws):
    ws.makefile("f", "w").write("abcdefg\n")
    r = ws.makefile("f")
    assert [r.read(1) for _ in "abcdefg\n"] == list("abcdefg\n")
    a = ws.makefile("f", "a")
    a.writelines(["more\n", "and more\n"])
    r = ws.makefile("f")
    assert r.read(3) == "abc"
    assert r.readline() == "defg\n"  # the rest of a value read in part, up to its newline
    assert r.readline(2) == "mo"
    assert r.read() == "re\nand more\n"


def test_files_refuse_what_the_original_refused(ws):
    w = ws.makefile("f", "w")
    with pytest.raises(ValueError):
        iter(w)
    with pytest.raises(ValueError):
        w.read()
    w.close()
    with pytest.raises(ValueError):
        w.write("x")
    ws.store("n", 1)
    r = ws.makefile("n")
    assert r.read(0) == ""
    with pytest.raises(ValueError, match="non-string"):
        r.read(1)
    with pytest.raises(ValueError):
        r.write("x")
    with pytest.raises(ValueError, match="not supported yet"):
        ws.makefile("f", "rb")
    with pytest.raises(ValueError, match="illegal mode specified"):
        ws.makefile("f", "x")
    ws.declare("stack", "lifo")
    with pytest.raises(NwsDeclarationFailedException):
        ws.makefile("stack", "a")  # every file declares its variable fifo
    ws.store("raw", b"bytes are text\n")
    assert ws.makefile("raw").read() == "bytes are text\n"


def test_file_attributes(ws):
    for mode in ("r", "w"):
        f = ws.makefile("attrs", mode)
        assert (f.mode, f.name, f.isatty(), f.closed) == (mode, "attrs", False, False)
        assert repr(f).startswith(f"<open nws file 'attrs', mode '{mode}'")
        f.close()
        assert f.closed
    assert "attrs" in ws.listVars(format=DICT)  # a file read creates its variable, as before
