"""What the magics of one shell act on: a session with a broker, the current workspace, key-value
stores, and the sleigh ``%nws sleigh`` started. Connections are made on first use."""

from __future__ import annotations

from urllib.parse import urlsplit

from ..client.keyvalue import DEFAULT_KV_WORKSPACE, KeyValueStore
from ..client.workspace import NetWorkSpace, NwsServer
from ..config import normalize_address
from ..sleigh import Sleigh

#: The workspace the magics act on until ``%nws use`` or ``%nws open`` names another; the one
#: ``NetWorkSpace()`` opens.
DEFAULT_WORKSPACE = "__default"


class MagicSession:
    """The broker session, workspace, stores and sleigh of one shell's magics."""

    def __init__(self) -> None:
        self.address: str | None = None  # set by connect; None: the broker found as usual
        self.ws_name = DEFAULT_WORKSPACE
        self.ws_options: dict = {"useUse": False}
        self.sleigh: Sleigh | None = None
        self._server: NwsServer | None = None
        self._ws: NetWorkSpace | None = None
        self._stores: dict[str, KeyValueStore] = {}

    def server(self) -> NwsServer:
        if self._server is None:
            self._server = _server_at(self.address)
        return self._server

    def workspace(self) -> NetWorkSpace:
        if self._ws is None:
            self._ws = NetWorkSpace(self.ws_name, server=self.server(), **self.ws_options)
        return self._ws

    def select(self, name: str, own: bool, persistent: bool = False,
               create: bool = True) -> NetWorkSpace:
        """Act on workspace ``name`` from now on: opened (claiming ownership if nobody has it,
        so that it is purged with this session unless ``persistent``) or only used."""
        options = {"useUse": not own, "create": create}
        if own:
            options["persistent"] = persistent
        ws = NetWorkSpace(name, server=self.server(), **options)
        self.ws_name, self.ws_options, self._ws = name, options, ws
        return ws

    def connect(self, address: str) -> str:
        """Use the broker at ``address`` from now on -> its normalized address. The old
        session ends (its owned workspaces are purged) once the new one is open; the current
        workspace's name is kept, and opened there on first use."""
        address = normalize_address(address)
        server = _server_at(address)
        old, self._server, self._ws, self.address = self._server, server, None, address
        stores, self._stores = self._stores, {}
        for store in stores.values():
            store.close()
        if old is not None:
            old.close()
        return server.address

    def store(self, workspace: str = DEFAULT_KV_WORKSPACE) -> KeyValueStore:
        """The key-value store kept in ``workspace``, on the magics' broker."""
        if workspace not in self._stores:
            server = self.server()
            self._stores[workspace] = KeyValueStore(server.serverHost, server.serverPort,
                                                    workspace=workspace)
        return self._stores[workspace]

    def start_sleigh(self, workers: int) -> Sleigh:
        """Start a sleigh of ``workers`` on the magics' broker, stopping the one before."""
        self.stop_sleigh()
        self.sleigh = Sleigh(workers, broker=self.server().address)
        return self.sleigh

    def stop_sleigh(self) -> Sleigh | None:
        sleigh, self.sleigh = self.sleigh, None
        if sleigh is not None:
            sleigh.stop()
        return sleigh

    def close(self) -> None:
        self.stop_sleigh()
        for store in self._stores.values():
            store.close()
        if self._server is not None:
            self._server.close()
        self._server = self._ws = None
        self._stores = {}


def _server_at(address: str | None) -> NwsServer:
    if address is None:
        return NwsServer()
    parts = urlsplit(address)
    return NwsServer(parts.hostname, parts.port)
