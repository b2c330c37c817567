"""The ``workbench`` command: ``workbench broker`` serves workspaces, ``workbench list`` shows
the brokers running on this machine, ``workbench status`` asks a running broker how it is
doing, ``workbench worker`` joins a sleigh (a worker pool), ``workbench babelfish`` translates
pickled values for the web view, ``workbench kernel install`` installs the "Python 3
(workbench)" Jupyter kernel, ``workbench compat SCRIPT`` runs an old NetWorkSpaces, berryMQ or
python-memcached script."""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import subprocess
import sys
import time

from ._version import __version__
from .config import (
    BROKER_ENV, BROKER_READY, COMPACT_FACTOR, COMPACT_MIN, COMPAT_ENV, CONNECT_TIMEOUT,
    DEFAULT_FSYNC, DEFAULT_HOST, DEFAULT_PORT, FSYNC_POLICIES, HANDSHAKE_TIMEOUT,
    KERNEL_DISPLAY_NAME, KERNEL_NAME, MAX_CONNECTIONS_PER_HOST, MAX_MESSAGE_SIZE,
    MAX_PENDING_OUTPUT, MAX_SUBSCRIPTIONS, MAX_WAITING, MAX_WATCHES, SLEIGH_WORKER_ENV,
    STATUS_TIMEOUT, WEB_MAX_BODY, WEB_MAX_STREAMS, WEB_PORT, Liveness, default_address,
    default_max_memory,
)

GATEWAY_STOP_TIMEOUT = 5.0  # seconds a `--web` gateway gets to stop before it is killed
_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def parse_size(text: str) -> int:
    """``1048576``, ``512M``, ``2GiB``, ``64k`` -> bytes."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(?:i?b)?\s*", text.lower())
    if not match:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size (try 512M or 2G)")
    return int(float(match.group(1)) * _UNITS[match.group(2)])


def positive(text: str) -> int:
    """A count of at least 1 (a cap of 0 would refuse everything)."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of at least 1")
    return value


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)  # pragma: no cover


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="workbench", description="A workbench for interactive distributed computing.")
    parser.add_argument("--version", action="version", version=f"workbench {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    live = Liveness.from_env()
    broker = commands.add_parser("broker", help="run a broker that serves workspaces",
                                 description="Serve workspaces over ZeroMQ until SIGINT/SIGTERM.")
    broker.add_argument("--host", default=DEFAULT_HOST,
                        help="interface to listen on (default %(default)s: this machine only)")
    broker.add_argument("--port", type=int, default=DEFAULT_PORT,
                        help="TCP port, 0 for any free one (default %(default)s)")
    broker.add_argument("--max-message-size", type=parse_size, default=MAX_MESSAGE_SIZE,
                        metavar="SIZE", help="largest request accepted (default 1G)")
    broker.add_argument("--max-pending-output", type=parse_size, default=MAX_PENDING_OUTPUT,
                        metavar="SIZE", help="replies waiting for a client that does not read "
                        "them, beyond which its requests wait unread (default 64M)")
    broker.add_argument("--max-memory", type=parse_size, default=None, metavar="SIZE",
                        help="cap on the bytes of values held; a store beyond it fails "
                             f"(default half of physical memory, {_human(default_max_memory())})")
    broker.add_argument("--max-waiting", type=positive, default=MAX_WAITING, metavar="N",
                        help="calls one client session may have waiting at once (blocked "
                             "fetch, find, take); one more fails (default %(default)s)")
    broker.add_argument("--max-subscriptions", type=positive, default=MAX_SUBSCRIPTIONS,
                        metavar="N", help="pub/sub patterns one client session may follow "
                                          "(default %(default)s)")
    broker.add_argument("--max-watches", type=positive, default=MAX_WATCHES, metavar="N",
                        help="workspaces one client session may watch (default %(default)s)")
    broker.add_argument("--max-connections-per-host", type=positive,
                        default=MAX_CONNECTIONS_PER_HOST, metavar="N",
                        help="TCP connections open at once from one address, loopback "
                             "included (a client process holds about three); one more is "
                             "closed at once. The private Unix socket is exempt "
                             "(default %(default)s)")
    broker.add_argument("--heartbeat-interval", type=float, default=live.interval, metavar="S",
                        help="seconds between client heartbeats (default %(default)s)")
    broker.add_argument("--heartbeat-liveness", type=int, default=live.liveness, metavar="N",
                        help="intervals of silence after which a client is dead and its "
                             "workspaces are purged (default %(default)s)")
    broker.add_argument("--no-shared-memory", action="store_true",
                        help="never accept values through /dev/shm from clients on this machine")
    broker.add_argument("--no-local-socket", action="store_true",
                        help="serve clients on this machine over TCP only, not over a Unix "
                             "socket only this user can reach")
    durability = broker.add_argument_group(
        "durability", "With a data directory the broker logs every change, and a restart "
        "(planned, crashed or kill -9) restores persistent workspaces, key-value entries, "
        "shared queues and sleighs' tasks. See docs/durability.md.")
    durability.add_argument("--data-dir", metavar="DIR",
                            help="keep the broker's state in DIR (made if missing); without it "
                                 "nothing is written and a restart starts empty")
    durability.add_argument("--fsync", choices=FSYNC_POLICIES, default=None,
                            help="when the log goes to disk: always (before each reply), "
                                 "everysec (at most a second later; a crash of the machine may "
                                 "lose that second), no (when the system chooses) (default "
                                 f"{DEFAULT_FSYNC})")
    durability.add_argument("--compact-min", type=parse_size, default=COMPACT_MIN,
                            metavar="SIZE",
                            help="rewrite the log as a snapshot of the state once it is larger "
                                 f"than SIZE and than {COMPACT_FACTOR:g} times the live data "
                                 f"(default {COMPACT_MIN >> 20}M)")
    security = broker.add_argument_group(
        "security", "Off loopback the broker speaks CURVE (authenticated, encrypted) and writes "
        "a connection file: whoever holds it can connect. See docs/security.md.")
    security.add_argument("--curve", action="store_true",
                          help="speak CURVE on loopback too (it is on by default elsewhere)")
    security.add_argument("--insecure", action="store_true",
                          help="speak the plain mechanism off loopback: anyone who reaches the "
                               "port can read, write and delete everything")
    security.add_argument("--key-file", metavar="PATH",
                          help="the broker's key pair, a secret certificate (`workbench keys`); "
                               "default: a new pair each start")
    security.add_argument("--allow-keys", metavar="DIR",
                          help="let in only clients whose public certificates (*.key) are in "
                               "DIR, read again when DIR changes")
    security.add_argument("--connection-file", metavar="PATH",
                          help="where to write the connection file (default: "
                               "broker-PORT.json in the user's runtime directory)")
    security.add_argument("--advertise", metavar="HOST",
                          help="the host clients reach the broker by, for the connection file "
                               "(default: --host, or this machine's address for 0.0.0.0)")
    security.add_argument("--handshake-timeout", type=float, default=HANDSHAKE_TIMEOUT,
                          metavar="S", help="seconds a connection may take to complete its "
                          "handshake before it is closed (default %(default)s)")
    broker.add_argument("--web", type=int, default=None, metavar="PORT",
                        help="also serve the HTTP/JSON gateway and web view on PORT (a "
                             "`workbench web` process beside the broker, on the same --host; "
                             "off loopback it needs its token: see docs/web.md)")
    broker.add_argument("--log-level", default="INFO",
                        choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    broker.add_argument("--parent-pid", type=int, default=None, help=argparse.SUPPRESS)
    broker.add_argument("--announce", action="store_true", help=argparse.SUPPRESS)
    # who started it, for `workbench list` (an embedded broker's parent describes itself)
    broker.add_argument("--started-by", default=None, help=argparse.SUPPRESS)

    web = commands.add_parser(
        "web", help="serve the HTTP/JSON gateway and the web view of a broker",
        description="An HTTP/JSON face of a broker that any language can use, and a live web "
                    "view, until SIGINT/SIGTERM. See docs/web.md.")
    web.add_argument("--broker", default=None, metavar="ADDR|FILE",
                     help=f"broker address or connection file (default ${BROKER_ENV}, else "
                          f"{default_address()}, else a private broker)")
    web.add_argument("--host", default="127.0.0.1",
                     help="interface to listen on (default %(default)s: this machine only)")
    web.add_argument("--port", type=int, default=WEB_PORT,
                     help="TCP port, 0 for any free one (default %(default)s)")
    add_web_security(web)
    web.add_argument("--max-body", type=parse_size, default=WEB_MAX_BODY, metavar="SIZE",
                     help="largest request body read (default 16M)")
    web.add_argument("--max-streams", type=positive, default=WEB_MAX_STREAMS, metavar="N",
                     help="event streams served at once (default %(default)s)")
    web.add_argument("--parent-pid", type=int, default=None, help=argparse.SUPPRESS)

    rebalance = commands.add_parser(
        "rebalance", help="move workspaces to where a changed cluster of brokers places them",
        description="After adding or removing brokers of a cluster: move each workspace (and "
                    "each key-value entry) to the broker the new cluster places it on. Run it "
                    "while no client uses them. See docs/scaling.md.")
    rebalance.add_argument("--from", dest="old", nargs="+", required=True, metavar="BROKER",
                           help="the cluster as it was: its brokers, or its cluster file")
    rebalance.add_argument("--to", dest="new", nargs="+", required=True, metavar="BROKER",
                           help="the cluster as it is now")
    rebalance.add_argument("--kv-workspace", action="append", metavar="NAME",
                           help="a workspace holding key-value entries, placed by key (default: "
                                "kv and hive); repeat for several")
    rebalance.add_argument("--dry-run", action="store_true", help="say what would move")

    status = commands.add_parser("status", help="show a running broker's state",
                                 description="Ask a broker for its clients, workspaces, memory "
                                             "and counters.")
    status.add_argument("--broker", default=None, metavar="ADDR|FILE",
                        help=f"broker address or connection file (default ${BROKER_ENV}, else "
                             "the broker running on this machine, asking which if there are "
                             f"several, else {default_address()})")
    status.add_argument("--json", action="store_true", help="print the raw JSON")
    status.add_argument("--timeout", type=float, default=STATUS_TIMEOUT, help="seconds to wait")

    listing = commands.add_parser(
        "list", help="list the brokers running on this machine",
        description="The brokers of this user running on this machine, started by "
                    "`workbench broker` or embedded in a process (a notebook's kernel, a "
                    "script), as each recorded itself when it started.")
    listing.add_argument("--json", action="store_true", help="print them as JSON")

    worker = commands.add_parser(
        "worker", help="join a sleigh (a worker pool) as one more worker",
        description="Take tasks from a running sleigh until it ends. Sleigh(...).wsName is "
                    "its name; run this on any machine that reaches the broker.")
    worker.add_argument("--broker", default=None, metavar="ADDR|FILE",
                        help="broker address or connection file; - reads the connection file "
                             f"on stdin (default ${BROKER_ENV}, else the broker running on "
                             f"this machine, else {default_address()})")
    worker.add_argument("--sleigh", required=True, metavar="NAME",
                        help="the sleigh's workspace name")
    worker.add_argument("--rank", type=int, default=None,
                        help="the rank to take (default: the next free one)")
    worker.add_argument("--workers", type=int, default=1, metavar="K",
                        help="start K workers here (ranks R to R+K-1 with --rank R), and "
                             "wait for them all: one batch job's share of a sleigh")
    worker.add_argument("--parent-pid", type=int, default=None, help=argparse.SUPPRESS)
    babelfish = commands.add_parser(
        "babelfish", help="translate pickled values into text for the web view (trusted)",
        description="Serve the workspace __babelfish: unpickle the values the web gateway asks "
                    "about and answer a short repr (and for numpy arrays and pandas frames "
                    "shape, dtype and first rows) until SIGINT/SIGTERM. Unpickling runs code "
                    "chosen by whoever stored the value: run it only where every client that "
                    "can store is trusted, as its own user. See docs/security.md.")
    babelfish.add_argument("--broker", default=None, metavar="ADDR|FILE",
                           help="broker address or connection file; - reads the connection "
                                f"file on stdin (default ${BROKER_ENV}, else the broker running "
                                f"on this machine, else {default_address()})")
    babelfish.add_argument("--log-level", default="INFO",
                           choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    _kernel_parser(commands)
    _keys_parsers(commands)
    compat = commands.add_parser(
        "compat", help="run an old script: import nws, berrymq, memcache, wrpme find the "
                       "workbench", description="Run SCRIPT as python would, with the old "
        "import names (nws.client, nws.sleigh, berrymq, memcache, wrpme) answered by the "
        "workbench, in SCRIPT and in the sleigh workers it starts. See docs/compat.md.")
    compat.add_argument("script", metavar="SCRIPT")
    compat.add_argument("args", nargs=argparse.REMAINDER, metavar="ARGS",
                        help="SCRIPT's own arguments (its sys.argv[1:])")
    return parser


def _keys_parsers(commands: argparse._SubParsersAction) -> None:
    keys = commands.add_parser(
        "keys", help="make a CURVE key pair (certificates in zmq.auth's format)",
        description="Write NAME.key (public: give it to a broker's --allow-keys directory) "
                    "and NAME.key_secret (mode 0600: keep it) into DIR.")
    keys.add_argument("name", metavar="NAME")
    keys.add_argument("--dir", default=".", metavar="DIR",
                      help="where to write them (default: here)")
    personal = commands.add_parser(
        "connection-file", help="make a connection file that carries your own key pair",
        description="Copy a broker's connection file (from a broker run with --allow-keys) "
                    "with the key pair of a secret certificate in it, mode 0600.")
    personal.add_argument("broker_file", metavar="BROKER_FILE")
    personal.add_argument("--key-file", required=True, metavar="NAME.key_secret",
                          help="your secret certificate (`workbench keys NAME`)")
    personal.add_argument("-o", "--output", required=True, metavar="PATH")


def _kernel_parser(commands: argparse._SubParsersAction) -> None:
    # The names come from config, not kernelspec: parsing ``workbench broker`` loads nothing
    # of the notebook layer.
    kernel = commands.add_parser(
        "kernel", help=f"install the \"{KERNEL_DISPLAY_NAME}\" Jupyter kernel",
        description=f"The \"{KERNEL_DISPLAY_NAME}\" Jupyter kernel: IPython with the workbench "
                    "extension loaded at start, so that %nws works in the first cell.")
    actions = kernel.add_subparsers(dest="kernel_command", required=True, metavar="ACTION")
    install = actions.add_parser(
        "install", help="install the kernel spec",
        description="Install the kernel spec (system-wide unless told otherwise); the kernel "
                    "runs this Python, so it finds this installation of workbench.")
    where = install.add_mutually_exclusive_group()
    where.add_argument("--user", action="store_true", help="install for this user only")
    where.add_argument("--sys-prefix", action="store_true",
                       help="install into this Python's environment (a virtualenv or conda "
                            "environment)")
    where.add_argument("--prefix", metavar="DIR", help="install under DIR/share/jupyter")
    install.add_argument("--name", default=KERNEL_NAME,
                         help="the kernel's name (default %(default)s)")
    install.add_argument("--display-name", default=KERNEL_DISPLAY_NAME,
                         help="the name shown in Jupyter (default %(default)r)")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "broker":
        return run_broker(args)
    if args.command == "worker":
        return run_worker(args)
    if args.command == "kernel":
        return run_kernel(args)
    if args.command == "keys":
        return run_keys(args)
    if args.command == "connection-file":
        return run_connection_file(args)
    if args.command == "compat":
        return run_compat(args)
    if args.command == "list":
        return run_list(args)
    if args.command == "babelfish":
        return run_babelfish(args)
    if args.command == "web":
        return run_web(args)
    if args.command == "rebalance":
        return run_rebalance(args)
    return run_status(args)


def add_web_security(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(
        "security", "Off loopback every request must carry the gateway's token, printed at "
        "start and written to its web connection file. See docs/web.md.")
    group.add_argument("--token-file", metavar="PATH",
                       help="read the token from PATH (default: a new one each start off "
                            "loopback, none on loopback)")
    group.add_argument("--certfile", metavar="PATH", help="serve HTTPS with this certificate")
    group.add_argument("--keyfile", metavar="PATH", help="... and this private key")
    group.add_argument("--insecure", action="store_true",
                       help="off loopback, serve without a token: anyone who reaches the port "
                            "can read, write and delete everything")
    group.add_argument("--connection-file", metavar="PATH",
                       help="where to write the web connection file (default: web-PORT.json "
                            "in the user's runtime directory)")
    group.add_argument("--advertise", metavar="HOST",
                       help="the host clients reach the gateway by, for the address it prints "
                            "and writes (default: --host, or this machine's address for "
                            "0.0.0.0)")


def run_rebalance(args: argparse.Namespace) -> int:
    from .client.migrate import PLACED_BY_KEY, rebalance
    from .errors import NwsException

    def cluster(given: list[str]) -> str | list[str]:
        return given[0] if len(given) == 1 else given

    try:
        moves = rebalance(cluster(args.old), cluster(args.new), dry_run=args.dry_run,
                          kv_workspaces=args.kv_workspace or PLACED_BY_KEY)
    except (NwsException, ValueError) as exc:
        print(f"workbench rebalance: {exc}", file=sys.stderr)
        return 1
    verb = "would move" if args.dry_run else "moved"
    for move in moves:
        what = (f"key {move.key!r} of {move.workspace}" if move.key is not None
                else f"workspace {move.workspace}")
        if move.skipped:
            print(f"left {what} on {move.source}: {move.skipped}")
        else:
            counted = "" if args.dry_run else f" ({move.values} values)"
            print(f"{verb} {what}: {move.source} -> {move.target}{counted}")
    done = [move for move in moves if not move.skipped]
    print(f"{len(done)} {verb}, {len(moves) - len(done)} left where they were")
    return 0


def run_web(args: argparse.Namespace) -> int:
    from .web.server import WebSettings, main as serve_web
    return serve_web(WebSettings(
        broker=args.broker, host=args.host, port=args.port, token_file=args.token_file,
        certfile=args.certfile, keyfile=args.keyfile, insecure=args.insecure,
        connection_file=args.connection_file, advertise=args.advertise,
        max_body=args.max_body,
        max_streams=args.max_streams, parent_pid=args.parent_pid))


def run_keys(args: argparse.Namespace) -> int:
    from .certificates import write_pair
    try:
        public, secret = write_pair(args.dir, args.name)
    except (OSError, ValueError) as exc:
        print(f"workbench keys: {exc}", file=sys.stderr)
        return 1
    print(f"public key {public} (for a broker's --allow-keys directory)\n"
          f"secret key {secret} (mode 0600: keep it to yourself)")
    return 0


def run_connection_file(args: argparse.Namespace) -> int:
    from .certificates import read_secret
    from .connection_file import read, write
    try:
        broker = read(args.broker_file)
        if not broker.curve:
            raise ValueError(f"{args.broker_file} is not a CURVE broker's connection file")
        mine = read_secret(args.key_file)
        write(args.output, broker._replace(client_key=mine.public, client_secret=mine.secret))
    except (OSError, ValueError) as exc:
        print(f"workbench connection-file: {exc}", file=sys.stderr)
        return 1
    print(f"wrote {args.output} (mode 0600): {broker.address} with the key of {args.key_file}")
    return 0


def run_compat(args: argparse.Namespace) -> int:
    if not os.path.isfile(args.script):  # what python says of a script it cannot open
        print(f"workbench compat: cannot open {args.script!r}: no such file", file=sys.stderr)
        return 2
    from .compat import run_script
    run_script(args.script, args.args)  # the script's sys.exit propagates, with its status
    return 0


def run_kernel(args: argparse.Namespace) -> int:
    from .jupyter.kernelspec import install

    prefix = sys.prefix if args.sys_prefix else args.prefix
    try:
        path = install(user=args.user, prefix=prefix, name=args.name,
                       display_name=args.display_name)
    except ImportError as exc:
        print(f"workbench kernel install: {exc}; pip install 'workbench[jupyter]'",
              file=sys.stderr)
        return 1
    except OSError as exc:  # system-wide without the rights to write there
        print(f"workbench kernel install: {exc}; try --user or --sys-prefix", file=sys.stderr)
        return 1
    print(f"Installed kernel {args.name} ({args.display_name}) in {path}")
    return 0


def run_worker(args: argparse.Namespace) -> int:
    from .sleigh.worker import run

    os.environ[SLEIGH_WORKER_ENV] = "1"  # a task may not start a sleigh of its own
    if os.environ.get(COMPAT_ENV):  # started for an old script: its tasks use the old names
        from .compat import install
        install()
    try:
        target = _broker_target(args.broker)
    except ValueError as exc:  # NwsConnectionFileException: a file that cannot be used
        print(f"workbench worker: {exc}", file=sys.stderr)
        return 2
    if args.workers < 1:
        print("workbench worker: --workers must be 1 or more", file=sys.stderr)
        return 2
    if args.workers > 1:
        from .sleigh.group import run_group
        return run_group(target, args.sleigh, args.workers, args.rank)
    return run(target, args.sleigh, args.rank, args.parent_pid)


def _broker_target(argument: str | None):
    """``--broker``: an address, a connection file, or ``-`` for a connection file's text on
    stdin (how a sleigh hands it to its workers: never on a command line); with none, the
    broker ``_named_broker`` finds, else the default address. What it names goes to
    ``WORKBENCH_BROKER`` too, in this process only, so tasks that open workspaces reach the
    same broker."""
    from .connection_file import parse, resolve
    if argument == "-":
        if sys.stdin is None or sys.stdin.isatty():  # nobody will write it: do not wait
            raise ValueError("--broker - reads a connection file's text on stdin, and stdin "
                             "is a terminal (or closed): give the file's path instead")
        text = sys.stdin.read()
        target = parse(text, "the connection read on stdin")
        os.environ[BROKER_ENV] = text
        return target
    named = _named_broker(argument)
    if named:
        os.environ[BROKER_ENV] = named
    return resolve(named or default_address())


def _named_broker(argument: str | None) -> str | None:
    """The broker a command was given (``--broker``, else ``WORKBENCH_BROKER``), else the one
    recorded as running on this machine (``workbench list``): the only one, or the one the
    user picks at the terminal. None when nothing names one and none is recorded; ValueError
    when several are and there is no terminal to ask at."""
    if argument or os.environ.get(BROKER_ENV):
        return argument or os.environ[BROKER_ENV]
    from .runtime import running_brokers
    running = running_brokers()
    if len(running) <= 1:
        return running[0].target if running else None
    listing = _broker_table(running, numbered=True)
    if sys.stdin is None or not sys.stdin.isatty():
        raise ValueError(f"{len(running)} brokers are running on this machine:\n{listing}\n"
                         f"name one with --broker ADDR|FILE (or ${BROKER_ENV})")
    print(f"{len(running)} brokers are running on this machine:\n{listing}", file=sys.stderr)
    while True:
        print(f"which one? [1-{len(running)}] ", end="", file=sys.stderr, flush=True)
        try:
            answer = sys.stdin.readline().strip()
        except KeyboardInterrupt:
            answer = ""
            print(file=sys.stderr)
        if not answer:
            raise ValueError("no broker chosen; name one with --broker ADDR|FILE")
        if answer.isdigit() and 1 <= int(answer) <= len(running):
            return running[int(answer) - 1].target


def _broker_table(records: list, numbered: bool = False) -> str:
    """Running brokers as ``workbench list`` prints them (numbered to choose from)."""
    rows = [("", "ADDRESS", "PID", "STARTED", "STARTED BY", "CURVE")]
    for number, record in enumerate(records, 1):
        curve = (record.connection_file or "yes") if record.curve else "no"
        rows.append((f"{number})", record.address, str(record.pid), record.started_local(),
                     record.started_by, curve))
    if not numbered:
        rows = [row[1:] for row in rows]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip()
                     for row in rows)


def run_list(args: argparse.Namespace) -> int:
    from .runtime import as_json, records_directory, running_brokers
    running = running_brokers()
    if args.json:
        print(json.dumps(as_json(running), indent=2))
    elif running:
        print(_broker_table(running))
    else:
        print(f"no broker of yours is running on this machine (none recorded in "
              f"{records_directory()}); start one with `workbench broker`, or use a "
              "workspace from Python or a notebook, which starts a private one")
    return 0


def run_broker(args: argparse.Namespace) -> int:
    from .broker.server import BrokerServer
    from .hosts import is_loopback
    from .broker.state import Limits
    from .runtime import remove_record

    logging.basicConfig(level=args.log_level, stream=sys.stderr,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    loopback = is_loopback(args.host)
    if args.curve and args.insecure:
        print("workbench broker: --curve and --insecure contradict each other", file=sys.stderr)
        return 2
    use_curve = args.curve or not (loopback or args.insecure)
    if not use_curve and (args.key_file or args.allow_keys or args.connection_file):
        print("workbench broker: --key-file, --allow-keys and --connection-file need CURVE: "
              "drop --insecure, or add --curve on loopback", file=sys.stderr)
        return 2
    limits = Limits(
        max_memory=args.max_memory if args.max_memory is not None else default_max_memory(),
        max_message_size=args.max_message_size,
        max_pending_output=args.max_pending_output,
        max_waiting=args.max_waiting,
        max_subscriptions=args.max_subscriptions,
        max_watches=args.max_watches,
        max_connections_per_host=args.max_connections_per_host,
        liveness=Liveness(args.heartbeat_interval, args.heartbeat_liveness),
        handshake_timeout=args.handshake_timeout,
    )
    if args.fsync is not None and args.data_dir is None:
        print("workbench broker: --fsync says how to write a data directory: add --data-dir",
              file=sys.stderr)
        return 2
    try:
        curve = _curve_security(args) if use_curve else None
    except ValueError as exc:  # a key file or directory that cannot be used
        print(f"workbench broker: {exc}", file=sys.stderr)
        return 2
    data_dir, unusable = None, ()
    if args.data_dir is not None:
        from .broker.durable import DataDir, DataDirError, LogError
        data_dir = DataDir(args.data_dir, args.fsync or DEFAULT_FSYNC,
                           compact_min=args.compact_min)
        unusable = (DataDirError, LogError)  # another broker's, or not readable
    server = BrokerServer(args.host, args.port, limits,
                          shared_memory=not args.no_shared_memory,
                          local_socket=not args.no_local_socket, curve=curve,
                          data_dir=data_dir)
    try:
        server.bind()
    except unusable as exc:
        print(f"workbench broker: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:  # address in use, unknown interface
        print(f"workbench broker: cannot listen on {args.host}:{args.port}: {exc}",
              file=sys.stderr)
        return 1
    written = None
    if curve is not None:
        written = _write_connection_file(args, server.port, curve)
    elif not loopback:
        logging.getLogger("workbench.broker").warning(
            "--insecure: listening on %s without authentication or encryption; anyone who "
            "reaches port %d can read, write and delete every workspace", args.host, server.port)
    recorded: list[str] = []
    gateway: list[subprocess.Popen] = []

    def ready(address: str) -> None:
        # recorded before it is announced: whoever learns of it can find it in the list
        recorded.extend(_record(args, address, written))
        if args.web is not None:
            gateway.append(_start_gateway(args, written or address))
        if args.announce:
            _announce(address)
    try:
        server.serve_forever(parent_pid=args.parent_pid, on_ready=ready)
    finally:
        for process in gateway:
            _stop_gateway(process)
        for path in recorded:
            remove_record(path)
        if written is not None and args.key_file is None:  # its keys die with this broker
            try:
                os.unlink(written)
            except OSError:
                pass
    return 1 if server.failure else 0


def _start_gateway(args: argparse.Namespace, broker: str) -> subprocess.Popen:
    """``--web PORT``: a ``workbench web`` process for this broker, on the same host (a client
    of the broker like any other: the broker itself serves no HTTP). It stops with the broker,
    and by itself if the broker dies without stopping it."""
    argv = [sys.executable, "-m", "workbench", "web", "--broker", broker, "--host", args.host,
            "--port", str(args.web), "--parent-pid", str(os.getpid())]
    if args.insecure:
        argv.append("--insecure")
    # its line saying where it serves goes to the broker's log, not to the broker's stdout,
    # where the process that started the broker may be reading the broker's announcement
    return subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=sys.stderr)


def _stop_gateway(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(GATEWAY_STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def _record(args: argparse.Namespace, address: str, connection_file: str | None) -> list[str]:
    """Record this broker for `workbench list` -> the record's path (none if it cannot be
    written: the broker serves all the same)."""
    from .runtime import describe_process, record_this_broker
    started_by = args.started_by or f"workbench broker, from {describe_process(os.getppid())}"
    try:
        return [record_this_broker(address, started_by, connection_file,
                                   curve=connection_file is not None)]
    except OSError as exc:
        logging.getLogger("workbench.broker").warning(
            "not recorded for `workbench list`: %s", exc)
        return []


def _curve_security(args: argparse.Namespace):
    from .broker.security import AllowedKeys, CurveSecurity, FileKeys, load_keys
    keys = load_keys(args.key_file)
    # Without --allow-keys, the key of the connection file written at start (_write_...).
    allowed = AllowedKeys(args.allow_keys) if args.allow_keys else FileKeys()
    return CurveSecurity(keys, allowed)


def _write_connection_file(args: argparse.Namespace, port: int, curve) -> str:
    from .broker.security import client_target
    from .hosts import advertised_host
    from .connection_file import default_path, write
    path = args.connection_file or default_path(port)
    host = args.advertise or advertised_host(args.host)
    address = f"tcp://{f'[{host}]' if ':' in host else host}:{port}"
    target = client_target(path, address, curve.keys.public, args.allow_keys is None)
    write(path, target)
    if target.client_key is not None:
        curve.allowed.add(target.client_key)
    who = ("clients with a key in " + args.allow_keys + " (`workbench connection-file` adds "
           "one to this file)" if args.allow_keys else "whoever holds it can connect, and no "
           "one else")
    print(f"workbench broker: CURVE on {address}; connection file {path} (mode 0600; {who})",
          file=sys.stderr, flush=True)
    return path


def _announce(address: str) -> None:
    """``--announce``: tell the process that started this broker (an embedded broker's parent,
    see ``client.embedded``) where it listens."""
    sys.stdout.write(f"{BROKER_READY}{address}\n")
    sys.stdout.flush()


def durability_lines(durability: dict | None, now: float | None = None) -> list[str]:
    """What ``workbench status`` says of the broker's data directory (``durability`` of its
    status: ``DataDir.status``), times on the wall clock, ``now`` by default."""
    if durability is None:
        return ["durability no data directory: nothing survives a restart"]
    now = time.time() if now is None else now
    log = durability["log_bytes"]
    compaction = f"last compaction {_when(durability['last_compaction'], now)}"
    if durability["compactions"]:
        compaction += f" ({durability['compactions']} since the broker started)"
    if durability["compacting"]:
        compaction += ", one under way"
    return [f"durability {durability['data_dir']} (--fsync {durability['fsync']}), log "
            + ("not open" if log is None else _human(log)),
            f"           last fsync {_when(durability['last_fsync'], now)}, {compaction}"]


def _when(moment: float | None, now: float) -> str:
    """A wall-clock time as ``2024-05-02 14:03:22 (3.2 s ago)``; ``never`` for None."""
    if moment is None:
        return "never"
    ago = max(0.0, now - moment)  # another machine's clock may run ahead of this one
    age = (f"{ago:.1f} s" if ago < 60 else f"{ago / 60:.0f} min" if ago < 3600
           else f"{ago / 3600:.1f} h")
    return f"{time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(moment))} ({age} ago)"


def _session(command: str, argument: str | None, timeout: float):
    """A session with the broker ``--broker`` names (see ``_broker_target``) -> NwsServer, or
    None once the reason it cannot be had is printed."""
    from .client.connection import Connection
    from .client.embedded import start_hint
    from .client.workspace import NwsServer
    from .errors import NwsException

    from .client.cluster import is_several

    try:
        if argument is not None and is_several(argument):  # a cluster file: its brokers as one
            return NwsServer(argument)
        target = _broker_target(argument)
        hint = start_hint(target.address)
        if not (argument or os.environ.get(BROKER_ENV)):  # nothing named, nothing recorded
            hint += ("; no other broker of yours is running on this machine "
                     "(`workbench list`)")
        return NwsServer(connection=Connection(target, timeout, hint=hint))
    except (NwsException, ValueError) as exc:  # no broker; a connection file that is no use
        print(f"workbench {command}: {exc}", file=sys.stderr)
        return None


def run_babelfish(args: argparse.Namespace) -> int:
    from .babelfish import run

    logging.basicConfig(level=args.log_level, stream=sys.stderr,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    server = _session("babelfish", args.broker, CONNECT_TIMEOUT)
    return 1 if server is None else run(server)


def run_status(args: argparse.Namespace) -> int:
    server = _session("status", args.broker, args.timeout)
    if server is None:
        return 1
    address = server.address
    with server:
        info = server.status(timeout=args.timeout)
        me = server.label
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    print(f"broker     {address}  (workbench {info['version']}, protocol {info['protocol']}, "
          f"up {info['uptime']:.0f} s)")
    print(f"memory     {_human(info['memory'])} of {_human(info['max_memory'])}; "
          f"messages up to {_human(info['max_message_size'])}")
    if "durability" in info:  # a broker older than data directories says nothing of them
        print("\n".join(durability_lines(info["durability"])))
    security = info.get("security", {})
    print(f"security   {security.get('mechanism', 'NULL')} on TCP"
          + (f", clients with a key in {security['allowed_keys']}"
             if security.get("allowed_keys") else
             ", the connection file's client key" if security.get("mechanism") == "CURVE"
             else "")
          + ("; the local Unix socket (this user only) plain" if security.get("local_socket")
             else ""))
    print(f"heartbeat  every {info['heartbeat_interval']:g} s, dead after "
          f"{info['heartbeat_interval'] * info['heartbeat_liveness']:g} s of silence")
    if "max_waiting" in info:  # a broker older than these caps has none
        print(f"caps       per session {info['max_waiting']} calls waiting, "
              f"{info['max_subscriptions']} subscriptions, {info['max_watches']} watches; "
              f"{info['max_connections_per_host']} connections per address")
    print(f"workspaces {info['workspaces']}, values {info['values']}, "
          f"blocked calls {info['waiting']}, unacknowledged hand-offs {info['leases']}")
    others = [c for c in info["clients"] if c["label"] != me]
    print(f"clients    {len(others)}")
    for client in others:
        owned = ", ".join(client["owned"]) or "-"
        print(f"  {client['label']:<32} requests {client['requests']:<8} owns {owned}")
    subscribers = info.get("subscribers", [])
    print(f"subscribers {len(subscribers)}")
    for sub in subscribers:
        follows = ", ".join(sub["patterns"] + [f"watch {w}" for w in sub["watches"]]) or "-"
        print(f"  {sub['client']:<32} delivered {sub['delivered']:<8} dropped {sub['dropped']:<6} "
              f"backlog {sub['backlog']:<6} {follows}")
    counters = ", ".join(f"{k} {v}" for k, v in sorted(info["counters"].items()))
    print(f"counters   {counters}")
    return 0
