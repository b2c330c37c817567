"""``workbench web``: the gateway on uvicorn, safe by default.

On loopback it needs no token unless given one (``--token-file``). Anywhere else it makes a
random token (or reads the one given), prints the address with it (as Jupyter does), writes it
to the web connection file (mode 0600), and refuses every request without it; ``--insecure``
serves without one. With ``--certfile`` and ``--keyfile`` it serves HTTPS.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import signal
import sys
import threading
import time
from dataclasses import dataclass
from functools import partial

from ..certificates import write_private
from ..config import WEB_MAX_BODY, WEB_MAX_STREAMS
from ..connection_file import runtime_directory
from ..hosts import advertised_host, is_loopback

log = logging.getLogger("workbench.web")


@dataclass
class WebSettings:
    """What ``workbench web`` was told."""

    broker: str | None = None
    host: str = "127.0.0.1"
    port: int = 0
    token_file: str | None = None
    certfile: str | None = None
    keyfile: str | None = None
    insecure: bool = False
    connection_file: str | None = None
    advertise: str | None = None  # the host clients elsewhere reach it by (default: --host)
    max_body: int = WEB_MAX_BODY
    max_streams: int = WEB_MAX_STREAMS
    parent_pid: int | None = None


class SetupError(Exception):
    """Settings the gateway cannot start with: the message says what to change."""


def choose_token(settings: WebSettings) -> str | None:
    """The token every request must carry, or None (see the module's docstring)."""
    if settings.token_file is not None:
        try:
            with open(settings.token_file, encoding="utf-8") as file:
                token = file.read().strip()
        except OSError as exc:
            raise SetupError(f"--token-file {settings.token_file}: {exc}") from None
        if len(token) < 16:
            raise SetupError(f"--token-file {settings.token_file}: a token of at least 16 "
                             "characters, please (`python -c 'import secrets; "
                             "print(secrets.token_urlsafe(32))'` makes one)")
        return token
    if is_loopback(settings.host) or settings.insecure:
        return None
    return secrets.token_urlsafe(32)


def serve(settings: WebSettings) -> int:
    """Run the gateway until SIGINT/SIGTERM (or until ``parent_pid`` is gone)."""
    import uvicorn

    from .app import create_app

    if (settings.certfile is None) != (settings.keyfile is None):
        raise SetupError("HTTPS needs both --certfile and --keyfile")
    token = choose_token(settings)
    broker = check_broker(settings.broker)
    tls = settings.certfile is not None
    if not is_loopback(settings.host) and settings.insecure:
        log.warning("--insecure: serving %s without a token; anyone who reaches port %d can "
                    "read, write and delete every workspace", settings.host, settings.port)
    elif not is_loopback(settings.host) and not tls:
        log.warning("serving %s over plain HTTP: the token travels unencrypted; give "
                    "--certfile and --keyfile for HTTPS", settings.host)
    app = create_app(settings.broker, token=token, translate=babelfish_asker,
                     max_body=settings.max_body, max_streams=settings.max_streams,
                     secure_cookie=tls, loopback=is_loopback(settings.host))
    config = uvicorn.Config(app, host=settings.host, port=settings.port, log_level="warning",
                            ssl_certfile=settings.certfile, ssl_keyfile=settings.keyfile,
                            lifespan="on", access_log=False, server_header=False)
    server = uvicorn.Server(config)
    written: list[str] = []
    announce = _Announcer(server, settings, token, tls, written, broker)
    announce.start()
    if settings.parent_pid is not None:
        _stop_with_parent(server, settings.parent_pid)
    # uvicorn stops on SIGTERM, then raises it again: let that end this process through the
    # ``finally`` below (which removes the web connection file), not by the signal's default
    signal.signal(signal.SIGTERM, _exit_quietly)
    try:
        server.run()
    except SystemExit:
        pass
    finally:
        for path in written:
            try:
                os.unlink(path)
            except OSError:
                pass
    return 0 if server.started else 1


class _Announcer(threading.Thread):
    """Once the server listens: print where, and write the web connection file."""

    def __init__(self, server, settings: WebSettings, token: str | None, tls: bool,
                 written: list[str], broker: str) -> None:
        super().__init__(name="workbench-web-announce", daemon=True)
        self.server, self.settings, self.token, self.tls = server, settings, token, tls
        self.written, self.broker = written, broker

    def run(self) -> None:
        while not self.server.started:
            if self.server.should_exit:
                return
            time.sleep(0.02)
        port = self.settings.port
        for listener in getattr(self.server, "servers", ()):  # the port, if 0 was asked for
            for sock in listener.sockets:
                port = sock.getsockname()[1]
        host = self.settings.advertise or advertised_host(self.settings.host)
        shown = f"[{host}]" if ":" in host else host
        url = f"{'https' if self.tls else 'http'}://{shown}:{port}/"
        path = self.settings.connection_file or os.path.join(runtime_directory(),
                                                             f"web-{port}.json")
        try:
            os.makedirs(os.path.dirname(os.path.abspath(path)), mode=0o700, exist_ok=True)
            write_private(path, json.dumps({"url": url, "token": self.token}) + "\n")
            self.written.append(path)
        except OSError as exc:
            log.warning("the web connection file %s could not be written: %s", path, exc)
        opened = f"{url}?token={self.token}" if self.token else url
        print(f"workbench web: serving {opened} (web connection file {path}) for the broker "
              f"at {self.broker}", flush=True)


def check_broker(broker: str | None) -> str:
    """The address of the broker the gateway is to serve, which answers -> its address.
    SetupError, in one line, if none answers; and a gateway is never the only client of a
    private broker of its own: without ``--broker`` (or WORKBENCH_BROKER) a broker must answer
    at the default address."""
    from ..client.embedded import connect
    from ..config import BROKER_ENV, DEFAULT_HOST, DEFAULT_PORT
    from ..errors import NwsException

    if broker is None and not os.environ.get(BROKER_ENV):
        import socket

        try:
            socket.create_connection((DEFAULT_HOST, DEFAULT_PORT), timeout=1.0).close()
        except OSError:
            raise SetupError(f"no broker answers at {DEFAULT_HOST}:{DEFAULT_PORT}: give "
                             "--broker ADDR|FILE (or set WORKBENCH_BROKER), or start one with "
                             "`workbench broker`") from None
    try:
        connection = connect(broker)
    except NwsException as exc:
        raise SetupError(str(exc)) from None
    try:
        return connection.address
    finally:
        connection.close()


def babelfish_asker(gateway, timeout: float | None = None):
    """What shows a pickled value through this gateway: a babelfish's answer when one runs
    (``workbench babelfish``; the gateway never unpickles), asked on the gateway's session."""
    from ..babelfish import ask

    if timeout is None:
        return partial(ask, gateway.server)
    return partial(ask, gateway.server, timeout=timeout)


def _exit_quietly(signum, frame) -> None:
    raise SystemExit(0)


def _stop_with_parent(server, parent_pid: int) -> None:
    def watch() -> None:
        while os.getppid() == parent_pid and not server.should_exit:
            time.sleep(0.5)
        server.should_exit = True

    threading.Thread(target=watch, name="workbench-web-parent", daemon=True).start()


def main(settings: WebSettings) -> int:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        return serve(settings)
    except SetupError as exc:
        print(f"workbench web: {exc}", file=sys.stderr)
        return 2
