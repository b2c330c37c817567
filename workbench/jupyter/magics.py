"""The ``%nws`` line magic and the ``%%nws_each`` cell magic: argument parsing and display
around the client, which does the work.

``%nws SUBCOMMAND ...`` acts on the current workspace of this shell's broker session
(``session``); every subcommand has its own ``--help``. Values come back as the magic's result
(``y = %nws fetch x``); expressions are evaluated in the user's namespace. A failure fails the
cell, as IPython's own magics do, so Run All stops there: a line the parser refuses, or an
expression that cannot be evaluated, raises IPython's ``UsageError``; an operation that fails
raises the workbench's exception (``NwsTimeoutException``...), shown as one line. A blocking
fetch says what it waits for, and Ctrl-C cancels it with nothing lost (the client cancels the
request at the broker) and fails the cell as an interrupt does.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import sys
from typing import Any, Iterator

from IPython.core.error import UsageError as IPythonUsageError
from IPython.core.magic import Magics, cell_magic, line_magic, magics_class, no_var_expand

from ..client.workspace import DICT, FIFO, LIFO, MULTI, SINGLE
from ..config import DEFAULT_HOST, DEFAULT_PORT, WAIT_HINT_AFTER
from ..errors import NwsException, NwsTimeoutException
from ..protocol import Status
from ..sleigh import RemoteError, Sleigh
from .brokers import BrokerSummary
from .cells import CellOutput, run_cell
from .parsing import (
    HelpShown, MagicError, Parser, UsageError, evaluate, name, split_option,
    split_words,
)
from .session import MagicSession
from .tables import Table
from .tracebacks import one_line


def build_parser() -> Parser:
    parser = Parser(prog="%nws", description="Drive the workbench broker from the notebook: "
                    "workspaces, key-value entries, pub/sub and a worker pool. Values and "
                    "listings are returned (y = %nws fetch x). See %nws SUBCOMMAND --help.")
    commands = parser.add_subparsers(dest="command", metavar="SUBCOMMAND", parser_class=Parser)

    def command(command_name: str, help: str, run: str, **extra: Any) -> Parser:
        # argparse %-formats a help string, not a description
        sub = commands.add_parser(command_name, help=help.replace("%", "%%"),
                                  description=help + ".", **extra)
        sub.set_defaults(run=run)
        return sub

    def var(sub: Parser, help: str = "the variable") -> None:
        sub.add_argument("var", metavar="VAR", type=name, help=help)

    def rest(sub: Parser, metavar: str, help: str) -> None:
        sub.add_argument("words", metavar=metavar, nargs=argparse.REMAINDER, help=help)

    sub = command("store", "store the value of a Python expression in a variable", "store")
    var(sub)
    rest(sub, "EXPR", "a Python expression, evaluated in the notebook's namespace")
    for op, what in (("fetch", "remove and return a value of VAR, waiting until there is one"),
                     ("find", "return a value of VAR without removing it, waiting until there "
                              "is one")):
        sub = command(op, what, "wait")
        var(sub)
        sub.add_argument("--timeout", type=float, metavar="S",
                         help="give up after S seconds (default: wait until Ctrl-C)")
    for op, what in (("fetchTry", "remove and return a value of VAR, or DEFAULT at once"),
                     ("findTry", "return a value of VAR without removing it, or DEFAULT at "
                                 "once")):
        pep8 = op.replace("Try", "_try")
        sub = command(op, what, "try_", aliases=[pep8])
        sub.set_defaults(op=op)
        var(sub)
        rest(sub, "DEFAULT", "a Python expression returned when VAR has no value "
                             "(default None)")
    sub = command("declare", "declare a variable's mode", "declare")
    var(sub)
    sub.add_argument("mode", metavar="MODE", choices=[FIFO, LIFO, MULTI, SINGLE],
                     help="fifo, lifo, multi or single")
    var(command("delete", "delete a variable and its values", "delete"))
    sub = command("vars", "list the variables of the workspace", "vars")
    sub.add_argument("ws", metavar="WS", nargs="?", type=name,
                     help="another workspace (default: the current one)")
    command("wss", "list the broker's workspaces (> marks those this session owns)", "wss")
    sub = command("use", "act on workspace WS from now on, without owning it", "use")
    sub.add_argument("ws", metavar="WS", type=name)
    sub.add_argument("--no-create", action="store_true", help="fail if WS does not exist")
    sub = command("open", "act on workspace WS from now on, owning it if nobody does (it is "
                          "purged when this kernel's session ends)", "open")
    sub.add_argument("ws", metavar="WS", type=name)
    sub.add_argument("--persistent", action="store_true",
                     help="keep it after this session ends")
    sub.add_argument("--no-create", action="store_true", help="fail if WS does not exist")
    sub = command("connect", "use the broker at ADDR from now on (the old session ends)",
                  "connect")
    sub.add_argument("address", metavar="ADDR", nargs="+",
                     help=f"tcp://host:port, host:port or a port (default {DEFAULT_HOST}:"
                          f"{DEFAULT_PORT}), or the path of a broker's connection file "
                          "(.json), whose keys are used; several, or a cluster file, for "
                          "brokers that act as one")
    command("status", "show the broker this notebook uses: its address, process, who started "
                      "it, clients and workspaces", "status")
    sub = command("twitter", "send a pub/sub message, as workbench.mq.twitter does", "twitter")
    sub.add_argument("identifier", metavar="ID", help="name[@namespace][:action]")
    rest(sub, "ARGS", "Python expressions separated by spaces, NAME=EXPR for keyword "
                      "arguments (parenthesize an expression that has spaces)")
    _kv_parser(command("kv", "get, set and increment key-value entries", "kv"))
    sub = command("sleigh", "start a sleigh (a worker pool) for %%nws_each, stop it, or "
                            "show it", "sleigh")
    sub.add_argument("workers", metavar="N|stop", type=_workers_or_stop, nargs="?",
                     help="start N workers on this machine (stopping the sleigh before), or "
                          "stop the sleigh")
    sub.add_argument("--stop", action="store_true", help="stop the sleigh (as `stop`)")
    command("dashboard", "show a live dashboard of the workspace", "dashboard")
    return parser


def _workers_or_stop(word: str) -> int | str:
    if word == "stop":
        return word
    try:
        return int(word)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{word!r} is neither a number of workers nor "
                                         "'stop'") from None


def _kv_parser(kv: Parser) -> None:
    kv.add_argument("--store", default="kv", metavar="WS",
                    help="the workspace the entries live in (default %(default)s)")
    ops = kv.add_subparsers(dest="kv_op", metavar="OP", required=True, parser_class=Parser)

    def op(op_name: str, help: str) -> Parser:
        sub = ops.add_parser(op_name, help=help, description=help + ".")
        sub.add_argument("key", metavar="KEY", type=name)
        return sub

    op("get", "return the value of KEY (None if absent)")
    put = op("set", "set KEY to the value of EXPR")
    put.add_argument("--ttl", type=float, default=0, metavar="S",
                     help="expire after S seconds (default: never)")
    put.add_argument("words", metavar="EXPR", nargs=argparse.REMAINDER,
                     help="a Python expression; --ttl S may also follow it")
    incr = op("incr", "add DELTA (default 1) to a number and return the result")
    incr.add_argument("delta", metavar="DELTA", type=int, nargs="?", default=1)
    op("delete", "remove KEY")


def _each_parser() -> Parser:
    parser = Parser(prog="%%nws_each", description="Run the cell on every worker of a sleigh "
                    "and show what each printed and its last expression's value. Each worker "
                    "keeps its own namespace from cell to cell; SleighRank is its rank.")
    parser.add_argument("sleigh", metavar="SLEIGH", nargs="?",
                        help="a name for a Sleigh in the notebook (default: the one "
                             "%%nws sleigh N started)")
    parser.add_argument("--timeout", type=float, metavar="S", help="give up after S seconds")
    return parser


def error(message: str) -> None:
    print(message, file=sys.stderr)


class MagicFailure(Exception):
    """A magic's work failed where no workbench exception says so (a cell that raised on the
    workers of ``%%nws_each``)."""


def _rank_of(output: CellOutput | RemoteError) -> int | None:
    return output.worker if isinstance(output, RemoteError) else output.rank


@magics_class
class NwsMagics(Magics):
    """The workbench magics of one shell, and what they act on (``session``)."""

    def __init__(self, shell: Any) -> None:
        super().__init__(shell)
        self.session = MagicSession()
        self.parser = build_parser()
        self.each_parser = _each_parser()

    # ------------------------------------------------------------------ the magics

    @no_var_expand
    @line_magic
    def nws(self, line: str) -> Any:
        """(replaced by the parser's help below)"""
        args = self._parse(self.parser, line)
        if args is None:
            return None
        if args.command is None:
            self.parser.print_help()
            return None
        label = f"%nws {args.command}"
        try:
            return getattr(self, "_" + args.run)(args)
        except KeyboardInterrupt as exc:
            raise one_line(exc, f"{label}: {exc or 'cancelled'}") from None
        except MagicError as exc:
            raise IPythonUsageError(f"{label}: {exc}") from None
        except (NwsException, MagicFailure, ValueError) as exc:  # ValueError: a bad value
            raise one_line(exc, f"{label}: {exc}") from None

    @no_var_expand
    @cell_magic
    def nws_each(self, line: str, cell: str) -> None:
        """(replaced by the parser's help below)"""
        args = self._parse(self.each_parser, line)
        if args is None:
            return
        try:
            sleigh = self._sleigh_named(args.sleigh)
        except MagicError as exc:
            raise IPythonUsageError(f"%%nws_each: {exc}") from None
        try:
            outputs = sleigh.eachWorker(run_cell, cell, timeout=args.timeout)
        except KeyboardInterrupt as exc:
            raise one_line(exc, "%%nws_each: cancelled (the workers were interrupted)") from None
        except NwsException as exc:
            raise one_line(exc, f"%%nws_each: {exc}") from None
        if not outputs:
            raise one_line(MagicFailure(), f"%%nws_each: {sleigh!r} has no workers")
        for output in outputs:
            show_output(output)
        failed = [_rank_of(output) for output in outputs
                  if isinstance(output, RemoteError) or output.error]
        if failed:
            ranks = ", ".join(map(str, failed))
            raise one_line(MagicFailure(), f"%%nws_each: the cell failed on worker "
                                           f"{ranks} (above)")

    def _parse(self, parser: Parser, line: str) -> argparse.Namespace | None:
        try:
            return parser.parse_args(split_words(line))
        except HelpShown:
            return None
        except UsageError as exc:
            raise IPythonUsageError(f"{exc}\n{exc.usage}" if exc.usage else str(exc)) from None

    def _sleigh_named(self, text: str | None) -> Sleigh:
        if text is None:
            if self.session.sleigh is None:
                raise MagicError("no sleigh: start one with `%nws sleigh N`, or name one: "
                                 "`%%nws_each s`")
            return self.session.sleigh
        sleigh = evaluate([text], self.shell.user_ns)
        if not isinstance(sleigh, Sleigh):
            raise MagicError(f"{text} is a {type(sleigh).__name__}, not a Sleigh")
        return sleigh

    # ------------------------------------------------------------------ values

    def _evaluate(self, words: list[str], missing: str = "") -> Any:
        if not words:
            if missing:
                raise MagicError(f"{missing} is missing")
            return None
        return evaluate(words, self.shell.user_ns)

    def _store(self, args: argparse.Namespace) -> None:
        value = self._evaluate(args.words, "EXPR")
        self.session.workspace().store(args.var, value)

    def _wait(self, args: argparse.Namespace) -> Any:
        ws = self.session.workspace()
        get = ws.fetch if args.command == "fetch" else ws.find
        timeout = args.timeout
        quiet = WAIT_HINT_AFTER if timeout is None else min(WAIT_HINT_AFTER, timeout)
        try:
            try:
                return get(args.var, timeout=quiet)
            except NwsTimeoutException:
                if timeout is not None and timeout <= quiet:
                    raise
            with self._hint(f"waiting for {args.var} in {ws.currentWs()}… (Ctrl-C cancels)"):
                return get(args.var, timeout=None if timeout is None else timeout - quiet)
        except NwsTimeoutException:
            raise NwsTimeoutException(f"no value of {args.var} within {timeout:g} s") from None
        except KeyboardInterrupt:
            taken = "; nothing was taken" if args.command == "fetch" else ""
            raise KeyboardInterrupt(f"cancelled{taken}") from None

    @contextlib.contextmanager
    def _hint(self, text: str) -> Iterator[None]:
        """Say what a call waits for: in a notebook for as long as it waits, else printed."""
        if getattr(self.shell, "kernel", None) is None:
            print(text, flush=True)
            yield
            return
        from IPython.display import display

        handle = display({"text/plain": text}, raw=True, display_id=True)
        try:
            yield
        finally:
            handle.update({"text/plain": ""}, raw=True)

    def _try_(self, args: argparse.Namespace) -> Any:
        ws = self.session.workspace()
        default = self._evaluate(args.words)
        get = ws.fetchTry if args.op == "fetchTry" else ws.findTry
        return get(args.var, default)

    # ------------------------------------------------------------------ variables, workspaces

    def _declare(self, args: argparse.Namespace) -> None:
        self.session.workspace().declare(args.var, args.mode)

    def _delete(self, args: argparse.Namespace) -> None:
        self.session.workspace().deleteVar(args.var)

    def _vars(self, args: argparse.Namespace) -> Table:
        ws = self.session.workspace()
        listed = args.ws or ws.currentWs()
        rows = ws.listVars(listed, format=DICT).values()
        return Table(f"variables of {listed}", ["variable", "values", "fetchers", "finders",
                                                "mode"], sorted(rows))

    def _wss(self, args: argparse.Namespace) -> Table:
        server = self.session.server()
        rows = [(">" if mine else "", ws, owner, persistent, nvars)
                for ws, mine, owner, persistent, nvars, _ in
                sorted(server.listWss(format=DICT).values())]
        return Table(f"workspaces at {server.address}",
                     ["", "workspace", "owner", "persistent", "variables"], rows)

    def _use(self, args: argparse.Namespace) -> None:
        self._select(args, own=False)

    def _open(self, args: argparse.Namespace) -> None:
        self._select(args, own=True, persistent=args.persistent)

    def _select(self, args: argparse.Namespace, own: bool, persistent: bool = False) -> None:
        ws = self.session.select(args.ws, own, persistent, create=not args.no_create)
        print(f"%nws acts on workspace {ws.currentWs()} at {self.session.server().address}")

    def _connect(self, args: argparse.Namespace) -> None:
        given = args.address
        address = self.session.connect(given[0] if len(given) == 1 else given)
        print(f"%nws connected to {address}")

    def _status(self, args: argparse.Namespace) -> BrokerSummary:
        return BrokerSummary.of(self.session.server())

    # ------------------------------------------------------------------ pub/sub, kv, sleigh

    def _twitter(self, args: argparse.Namespace) -> None:
        from .. import mq

        positional, keywords = [], {}
        for word in args.words:
            key, eq, text = word.partition("=")
            if eq and key.isidentifier() and not text.startswith("="):
                keywords[key] = self._evaluate([text])
            else:
                positional.append(self._evaluate([word]))
        if self.session.address is not None:  # mq then talks to the magics' broker too
            mq.init_connection(self.session.address)
        mq.twitter(args.identifier, *positional, **keywords)

    def _kv(self, args: argparse.Namespace) -> Any:
        store = self.session.store(args.store)
        key = args.key
        if args.kv_op == "get":
            entry = store.get(key)
            if entry is None:
                error(f"%nws kv get: no entry {key!r} in {args.store}")
                return None
            return entry.value
        if args.kv_op == "set":
            words, ttl = split_option(args.words, "--ttl")
            status, _ = store.store(key, self._evaluate(words, "EXPR"),
                                    ttl=float(ttl) if ttl is not None else args.ttl)
            if status != Status.OK:
                raise MagicFailure(f"{key!r} was not stored ({Status(status).name})")
            return None
        if args.kv_op == "incr":
            value = store.incr(key, args.delta)
            if value is None:
                error(f"%nws kv incr: no entry {key!r} in {args.store}")
            return value
        if not store.delete(key):
            error(f"%nws kv delete: no entry {key!r} in {args.store}")
        return None

    def _sleigh(self, args: argparse.Namespace) -> Any:
        session = self.session
        if args.workers == "stop":
            args.stop, args.workers = True, None
        if args.stop:
            stopped = session.stop_sleigh()
            print(f"%nws sleigh: stopped {stopped.wsName}" if stopped
                  else "%nws sleigh: there was no sleigh to stop")
        if args.workers is not None:
            return session.start_sleigh(args.workers)
        if not args.stop:
            if session.sleigh is None:
                print("%nws sleigh: none started; `%nws sleigh N` starts one of N workers")
                return None
            return session.sleigh.state()
        return None

    def _dashboard(self, args: argparse.Namespace) -> Any:
        try:
            widgets = importlib.import_module(f"{__package__}.widgets")
        except ModuleNotFoundError as exc:
            if exc.name == "ipywidgets":
                raise MagicError("the dashboard needs ipywidgets: "
                                 "pip install 'workbench[jupyter]'") from None
            if exc.name != f"{__package__}.widgets":
                raise
            widgets = None
        dashboard = getattr(widgets, "dashboard", None)
        if dashboard is None:
            raise MagicError("the dashboard is not available in this version of workbench")
        try:
            return dashboard(self.session.workspace())
        except RuntimeError as exc:  # no event loop to update it on, outside a kernel
            raise MagicError(str(exc)) from None


# `%nws?` and `%%nws_each?` show what --help shows.
NwsMagics.nws.__doc__ = build_parser().format_help()
NwsMagics.nws_each.__doc__ = _each_parser().format_help()


def show_output(output: CellOutput | Exception) -> None:
    """One worker's part of a %%nws_each: what it printed, its error, its value."""
    if isinstance(output, RemoteError):
        error(f"[worker {output.worker}] {output.type_name}: {output.message}")
        return
    label = f"[worker {output.rank}]"
    for text, stream in ((output.stdout, sys.stdout), (output.stderr, sys.stderr),
                         (output.error, sys.stderr)):
        if text:
            stream.write("".join(f"{label} {line}\n" for line in text.splitlines()))
    sys.stdout.flush()
    if output.value is not None:
        print(f"Out[worker {output.rank}]: {output.value}")
