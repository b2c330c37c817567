"""What the magics of one shell act on: a session with a broker, the current workspace, key-value
stores, and the sleigh ``%nws sleigh`` started. Connections are made on first use."""

from __future__ import annotations

from ..client.cluster import is_several
from ..client.keyvalue import DEFAULT_KV_WORKSPACE, KeyValueStore
from ..client.workspace import NetWorkSpace, NwsServer
from ..config import normalize_address
from ..connection_file import is_connection_file, resolve
from ..sleigh import Sleigh

#: The workspace the magics act on until ``%nws use`` or ``%nws open`` names another; the one
#: ``NetWorkSpace()`` opens.
DEFAULT_WORKSPACE = "__default"


class MagicSession:
    """The broker session, workspace, stores and sleigh of one shell's magics."""

    def __init__(self) -> None:
        # set by connect: an address or a connection file; None: the broker found as usual
        self.address: str | list[str] | None = None
        self.ws_name = DEFAULT_WORKSPACE
        self.ws_options: dict = {"useUse": False}
        self.sleigh: Sleigh | None = None
        self._server: NwsServer | None = None
        self._ws: NetWorkSpace | None = None
        self._stores: dict[str, KeyValueStore] = {}

    def server(self) -> NwsServer:
        if self._server is None:
            self._server = NwsServer(self.address)
        return self._server

    def broker(self) -> str:
        """What another client of the magics' broker is given: the connection file or address
        ``connect`` was given, else the address of the broker found."""
        return self.address or self.server().address

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

    def connect(self, address: str | list[str]) -> str:
        """Use the broker at ``address`` (or of a connection file; or several brokers acting
        as one: a list, a cluster file) from now on -> its address, and the file it came
        from. The old session ends (its owned workspaces are purged) once the new one is open;
        the current workspace's name is kept, and opened there on first use."""
        if is_several(address):
            source = None
        elif is_connection_file(address):
            source = resolve(address).source  # the path, never the keys of JSON text
        else:
            address, source = normalize_address(address), None
        server = NwsServer(address)
        old, self._server, self._ws, self.address = self._server, server, None, address
        stores, self._stores = self._stores, {}
        for store in stores.values():
            store.close()
        if old is not None:
            old.close()
        return server.address if source is None else f"{server.address} ({source})"

    def store(self, workspace: str = DEFAULT_KV_WORKSPACE) -> KeyValueStore:
        """The key-value store kept in ``workspace``, on the magics' broker."""
        if workspace not in self._stores:
            self._stores[workspace] = KeyValueStore(self.broker(), workspace=workspace)
        return self._stores[workspace]

    def start_sleigh(self, workers: int) -> Sleigh:
        """Start a sleigh of ``workers`` on the magics' broker, stopping the one before."""
        self.stop_sleigh()
        self.sleigh = Sleigh(workers, broker=self.broker())
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
