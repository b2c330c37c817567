"""Every default of the workbench, with its unit, and the environment variables that override them.

Durations are in seconds, sizes in bytes. Tests shrink the liveness intervals through the same
environment variables a user would set.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

#: Environment variable naming the broker a client should use, as ``tcp://host:port`` or
#: ``host:port``. Set by an embedded broker's parent so that its children find the same broker.
BROKER_ENV = "WORKBENCH_BROKER"
HEARTBEAT_INTERVAL_ENV = "WORKBENCH_HEARTBEAT_INTERVAL"
HEARTBEAT_LIVENESS_ENV = "WORKBENCH_HEARTBEAT_LIVENESS"
#: Environment variable naming the directory where running brokers record themselves (what
#: ``workbench list`` reads), instead of ``$XDG_RUNTIME_DIR/workbench``: tests isolate with it.
RUNTIME_DIR_ENV = "WORKBENCH_RUNTIME_DIR"
#: What ``workbench broker --announce`` prints on stdout, followed by its address, once it
#: serves: how the process that started an embedded broker learns its port.
BROKER_READY = "WORKBENCH_BROKER "

#: The name and the display name of the "Python 3 (workbench)" Jupyter kernel.
KERNEL_NAME = "workbench"
KERNEL_DISPLAY_NAME = "Python 3 (workbench)"

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8765

#: Seconds between two heartbeats of a client session.
HEARTBEAT_INTERVAL = 1.0
#: Heartbeat intervals a session may stay silent before the broker declares it dead (and the
#: client declares the broker unreachable). Dead after interval x liveness = 3 s by default.
HEARTBEAT_LIVENESS = 3

#: Seconds a client waits for a broker's first answer at an explicit address.
CONNECT_TIMEOUT = 5.0
#: Seconds a client waits for the default broker to answer once its port accepts connections.
PROBE_TIMEOUT = 2.0
#: Seconds an embedded broker may take to start and report its address.
EMBEDDED_START_TIMEOUT = 20.0
#: Seconds a cancelled request (timeout, Ctrl-C) waits for the broker to confirm the cancel.
CANCEL_TIMEOUT = 5.0
#: Seconds the default address has to accept a connection before a private broker is started.
PORT_PROBE_TIMEOUT = 0.5
#: Seconds the broker's Unix socket has to answer before a client on its machine keeps TCP.
LOCAL_PROBE_TIMEOUT = 2.0
#: Seconds a closing client waits for the broker to confirm its goodbye.
BYE_TIMEOUT = 1.0
#: Seconds a collected or exiting connection gives its goodbye (its acknowledgements, then BYE).
GOODBYE_WAIT = 0.5
#: Seconds an exiting process gives the private broker it started to stop before killing it.
EMBEDDED_STOP_TIMEOUT = 5.0
#: Seconds a connection's delivery socket (pub/sub, watches) may take to start.
DELIVERY_START_TIMEOUT = 10.0
#: Seconds a notebook's display of a session, workspace or store waits for the broker.
REPR_TIMEOUT = 2.0
#: Seconds ``workbench status`` waits for the broker (``--timeout``).
STATUS_TIMEOUT = 2.0
#: Seconds a new connection may take to complete its handshake (greeting and READY, or CURVE's
#: four commands) before it is closed: libzmq's default too (`--handshake-timeout`).
HANDSHAKE_TIMEOUT = 30.0
#: Seconds a stopping broker keeps writing the replies that tell blocked clients it stops.
STOP_LINGER = 1.0

#: Largest request the broker accepts, all frames together (1 GiB).
MAX_MESSAGE_SIZE = 1 << 30
#: Bytes of replies a connection may have waiting to be written before the broker stops reading
#: its requests, until the client has taken half of them (a client that never reads its
#: replies must not grow the broker without bound).
MAX_PENDING_OUTPUT = 64 << 20
#: Caps on what one client session may keep open at the broker, so that a runaway or hostile
#: client cannot grow the broker's bookkeeping without bound (values are capped by memory).
#: Blocked calls (fetch, find, a worker's or a queue's take) waiting at once, in requests: a
#: sleigh's master waits on every worker's farewell, so this stays far above any pool's size
#: (each wait costs the broker 0.4 to 2 KiB).
MAX_WAITING = 100_000
#: Publish/subscribe patterns a session follows (distinct patterns, summed over its sockets).
MAX_SUBSCRIPTIONS = 10_000
#: Workspaces a session watches (a dashboard watches one, or all as "*").
MAX_WATCHES = 1_000
#: TCP connections open at once from one source address (a client process holds about three:
#: its calling thread's, its heartbeat's and its delivery socket's, plus one a thread). The
#: private Unix socket is exempt (only the broker's user reaches it); loopback is not, since
#: every user of the machine reaches it.
MAX_CONNECTIONS_PER_HOST = 2048
#: Pickle buffers at least this large travel out of band as their own zero-copy frames.
OUT_OF_BAND_THRESHOLD = 64 * 1024
#: Longest workspace or variable name, in UTF-8 bytes.
MAX_NAME_LENGTH = 1024
#: Set to 0 to make a client send every value through the socket, never through shared memory.
SHM_ENV = "WORKBENCH_SHM"
#: Set to 0 to make a client on the broker's machine talk TCP instead of the broker's Unix socket.
LOCAL_SOCKET_ENV = "WORKBENCH_LOCAL_SOCKET"
#: Seconds a broker keeps a shared-memory file after its value is gone (for late finders).
SHM_RELEASE_GRACE = float(os.environ.get("WORKBENCH_SHM_GRACE", 10.0))
#: Values whose big frames add up to at least this many bytes go through shared memory when the
#: broker shares the client's machine (1 MiB).
SHM_THRESHOLD = 1 << 20

#: ``--fsync`` with a data directory: when the log is put on disk (``broker.durable.datadir``
#: says what each guarantees). ``everysec``, as Redis's ``appendfsync``, by default.
FSYNC_POLICIES = ("always", "everysec", "no")
DEFAULT_FSYNC = "everysec"
#: Seconds between two fdatasyncs at most under ``everysec``.
FSYNC_EVERY = 1.0
#: A data directory's log is compacted when it is larger than COMPACT_MIN bytes (64 MiB) and
#: than COMPACT_FACTOR times the live data, in slices of COMPACT_SLICE seconds of the broker's
#: loop.
COMPACT_MIN = 64 << 20
COMPACT_FACTOR = 2.0
COMPACT_SLICE = 0.005

#: Seconds mq waits for the broker to take the acknowledgements of shared-queue messages (at
#: exit, on a change of broker).
MQ_ACK_TIMEOUT = 2.0
#: Seconds between attempts to give a connection whose broker went away a new session.
RECONNECT_INTERVAL = 1.0
#: Seconds a sleigh (its master and its workers) waits for a broker with a data directory to
#: come back after it went away, before giving up as it does at once on any other broker.
BROKER_RESTART_GRACE = 60.0
#: Seconds ``mq.get_nowait(token)`` on an empty queue waits for what the broker already sent
#: this process to be read (a round trip when nothing is behind; longer only while a follower
#: holds up the delivery thread).
MQ_SYNC_TIMEOUT = 2.0
#: Messages a standalone ``mq.Queue`` holds before it drops the oldest.
MQ_QUEUE_MAXSIZE = 10_000
#: Follower calls pending in ``mq.set_multiplicity``'s pool before messages from other
#: processes wait (and the broker's bounded backlog takes over).
MQ_POOL_BACKLOG = 10_000

#: Seconds between two redraws of a live widget, at most (a burst of changes is one redraw).
WIDGET_INTERVAL = 0.15
#: Seconds a widget's request to the broker may take.
WIDGET_REQUEST_TIMEOUT = 5.0
#: Seconds a magic's blocking call waits before it shows that it is waiting.
WAIT_HINT_AFTER = 0.25

#: Publish/subscribe flow control, per delivery socket: messages in flight before its client
#: grants credit; messages, and bytes of them, waiting beyond that before the oldest are dropped.
DELIVERY_WINDOW = 1000
DELIVERY_BACKLOG = 10_000
DELIVERY_BACKLOG_BYTES = 64 << 20

#: Set in every sleigh worker's environment: a task may not start a sleigh of its own.
SLEIGH_WORKER_ENV = "WORKBENCH_SLEIGH_WORKER"
#: Set while ``workbench.compat`` answers the old import names (``nws.client``, ``memcache``,
#: ...) in a process; a sleigh worker started with it set answers them too.
COMPAT_ENV = "WORKBENCH_COMPAT"
#: Seconds a new sleigh waits for its first worker to join (``Sleigh(startTimeout=)``).
SLEIGH_START_TIMEOUT = 30.0
#: Deaths of workers after which a task record is not run again (a ``PoisonTaskError``).
TASK_DEATHS_LIMIT = 3
#: Worker starts in a row that die before saying hello, after which a rank is not started again.
WORKER_STARTUP_FAILURES = 3
#: Seconds a stopping sleigh gives its workers to leave by themselves, then after SIGTERM.
WORKER_LEAVE_TIMEOUT = 2.0
WORKER_KILL_TIMEOUT = 1.0
#: Task records a worker takes in one request, at most.
WORKER_MOST_TASKS = 1024
#: Seconds a worker's hand of tasks should take: faster tasks are taken several at a time.
WORKER_HAND_SECONDS = 0.005
#: Seconds after which a worker gives the records of its hand that it has not started back to
#: the queue, for idle workers: its tasks are slower than those its hand was sized on.
WORKER_GIVE_BACK_SECONDS = 4 * WORKER_HAND_SECONDS
#: A worker sends its results at least this often (seconds), and at this many elements, during a
#: long hand. Tiny tasks' results travel about a hand at a time: a message per record of a few
#: thousand elements cost the broker and the master more CPU than the tasks themselves.
WORKER_FLUSH_SECONDS = 0.005
WORKER_FLUSH_ITEMS = 16384
#: Steps of niceness a worker on the broker's machine adds to its own (``os.nice``), and the
#: variable that sets them (0: none). With as many busy workers as cores, the broker, which the
#: workers and the master all wait on, and the master get the CPU first when they wake; a task
#: alone on its core runs as fast as before.
WORKER_NICE = 1
WORKER_NICE_ENV = "WORKBENCH_WORKER_NICE"
#: Workers that eachElem's own chunks (no chunkSize) are planned for, at most, whatever the
#: pool's size: a hundred workers get the records of four, and share them in hands.
SLEIGH_CHUNK_WORKERS = 4
#: Seconds between two looks of a waiting caller at its call (Ctrl-C is seen within this).
SLEIGH_WAIT_SLICE = 0.1


#: The babelfish (``workbench babelfish``): the workspace it owns while it runs, and the
#: variable it takes requests from.
BABELFISH_WS = "__babelfish"
BABELFISH_REQUESTS = "requests"
#: Seconds ``babelfish.ask`` waits for an answer before it gives up (the gateway then shows a
#: pickled value's type and size only).
BABELFISH_TIMEOUT = 2.0
#: Largest value, in bytes, that ``babelfish.ask`` sends to be translated: a preview is not worth
#: moving more through the broker twice.
BABELFISH_MAX_VALUE = 64 << 20
#: Seconds a waiting babelfish's fetch lasts at most, between two looks at the replies it
#: left to delete.
BABELFISH_POLL = 1.0
#: Seconds past an asker's timeout after which the babelfish deletes a reply nobody took.
BABELFISH_REPLY_GRACE = 1.0
#: Bounds of an answer: characters of the repr and of the head, rows of the head.
BABELFISH_REPR_CHARS = 200
BABELFISH_HEAD_CHARS = 2000
BABELFISH_HEAD_ROWS = 5


def default_max_memory() -> int:
    """Half of physical memory: the broker refuses stores beyond it instead of being killed."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2
    except (ValueError, OSError, AttributeError):  # pragma: no cover - non-POSIX
        return 8 << 30


@dataclass(frozen=True)
class Liveness:
    """Heartbeat arithmetic shared by broker and client: silent for ``timeout`` s means dead."""

    interval: float = HEARTBEAT_INTERVAL
    liveness: int = HEARTBEAT_LIVENESS

    @property
    def timeout(self) -> float:
        return self.interval * self.liveness

    @classmethod
    def from_env(cls) -> Liveness:
        return cls(
            interval=float(os.environ.get(HEARTBEAT_INTERVAL_ENV, HEARTBEAT_INTERVAL)),
            liveness=int(os.environ.get(HEARTBEAT_LIVENESS_ENV, HEARTBEAT_LIVENESS)),
        )


def normalize_address(address: str) -> str:
    """``host:port``, ``tcp://host:port`` or a bare port -> ``tcp://host:port``."""
    address = address.strip()
    if "://" in address:
        return address
    if address.isdigit():
        return f"tcp://{DEFAULT_HOST}:{address}"
    if ":" not in address:
        return f"tcp://{address}:{DEFAULT_PORT}"
    return f"tcp://{address}"


def default_address() -> str:
    return f"tcp://{DEFAULT_HOST}:{DEFAULT_PORT}"

# ------------------------------------------------------------------ the HTTP gateway (web)
WEB_PORT = 8766  # `workbench web` and `workbench broker --web` (DEFAULT_PORT is the broker's)
#: The largest request body the gateway reads (bytes); larger ones answer 413.
WEB_MAX_BODY = 16 << 20
#: The longest ``?wait=`` a find or fetch through the gateway may ask for (seconds).
WEB_MAX_WAIT = 300.0
#: Broker calls the gateway makes at once from its threads (large bodies, previews; waits
#: have WEB_WAITS); more such requests wait for one. The other calls go out from the event
#: loop, unthrottled.
WEB_CALLS = 64
#: Bytes of arguments and value beyond which a call goes out from a gateway thread, not from
#: the event loop: one large send must never hold the loop.
WEB_LOOP_CALL_MOST = 64 << 10
#: Seconds the broker may take to answer a gateway call that does not wait (then 504, and the
#: request is cancelled). A broker that stopped is noticed sooner, by the heartbeat (502).
WEB_CALL_TIMEOUT = 10.0
#: Finds and fetches with ``?wait=`` waiting at once; more wait for one of them to end.
WEB_WAITS = 128
#: A wait through the gateway asks the broker in slices this long (seconds), looking between
#: them whether its HTTP client is still there.
WAIT_SLICE = 1.0
#: Event streams (``/api/events``) one gateway serves at once; each holds one broker watch.
WEB_MAX_STREAMS = 256
#: Events and messages waiting for one slow event-stream reader before they are dropped (the
#: stream then says ``overflow``, and the page reloads what it shows).
WEB_STREAM_BACKLOG = 1000
#: A comment line on every event stream this often (seconds), so that proxies keep it open.
WEB_KEEPALIVE = 15.0
WEB_TOKEN_COOKIE = "workbench_token"
#: Seconds a listing's previews wait for a babelfish per pickled value (a single value's view
#: waits BABELFISH_TIMEOUT).
PREVIEW_TRANSLATE_TIMEOUT = 0.3
#: Seconds a ``workbench.shards`` connection waits to reach a gateway, and then for each read
#: of its answer: give a longer one for a ``?wait=`` beyond it.
SHARDS_TIMEOUT = 30.0
