"""The gateway's session with the broker, and its blocking face: ``Gateway.call`` sends a
``calls.BrokerCall`` from a gateway thread (waits, large bodies; the event loop sends the rest
itself through ``caller.LoopCaller``, on a channel of this same session).

Values come back as raw frames, never decoded here (``values`` shows them). Each thread of the
gateway has its own channel on the session, as every client thread does. Every call has a
timeout, and a call whose timeout runs out is cancelled at the broker, so nothing is taken
after the HTTP client was told 408 (a wait that ran out) or 504 (no answer in time).
"""

from __future__ import annotations

from typing import Any, Callable

from ..client.connection import Connection
from ..client.embedded import connect
from ..client.workspace import NwsServer
from ..config import CONNECT_TIMEOUT, WEB_CALL_TIMEOUT
from ..errors import NwsTimeoutException
from ..protocol import Status
from .calls import BrokerCall


class BrokerTimeout(NwsTimeoutException):
    """The broker did not answer a call that does not wait within the gateway's call timeout
    (HTTP 504); the request was cancelled."""


def no_answer(address: str, timeout: float) -> BrokerTimeout:
    return BrokerTimeout(f"the broker at {address} did not answer within {timeout:g} s (the "
                         "request was cancelled); is it overloaded or stopped?")


class Gateway:
    """A session with one broker, for the gateway's requests (from any of its threads).
    ``call_timeout``: seconds a call that does not wait may take."""

    def __init__(self, broker: str | None = None, timeout: float = CONNECT_TIMEOUT,
                 connection: Connection | None = None,
                 call_timeout: float = WEB_CALL_TIMEOUT) -> None:
        self.connection = connection or connect(broker, None, timeout)
        self.server = NwsServer(connection=self.connection)  # what asks a babelfish
        self.call_timeout = call_timeout

    @property
    def address(self) -> str:
        return self.connection.address

    @property
    def label(self) -> str:
        """This session's name among the broker's clients."""
        return self.connection.label

    def close(self) -> None:
        self.connection.close()

    def call(self, call: BrokerCall, wait: float | None = None,
             respond: Callable[[Any], Any] | None = None) -> Any:
        """Send ``call`` from this thread and wait for its answer -> ``respond(answer)`` if
        given, else the answer. ``wait``: the seconds a call that waits at the broker may
        wait (NwsTimeoutException after), None for one that does not.

        A leased value is acknowledged only once ``respond`` returned; if it raises, the
        request is cancelled and the broker puts the value back."""
        def decode(head: bytes, extra: list) -> Any:
            answer = call.answer(Status.OK, head, extra)
            return respond(answer) if respond is not None else answer

        timeout = self.call_timeout if wait is None else wait
        try:
            status, result = self.connection.read(call.op, call.args, call.frames, timeout,
                                                  decode, leased=call.leased, spill=call.spill)
        except NwsTimeoutException:
            if wait is None:
                raise no_answer(self.address, timeout) from None
            raise
        if status == Status.OK:
            return result
        answer = call.answer(status, *result)
        return respond(answer) if respond is not None else answer
