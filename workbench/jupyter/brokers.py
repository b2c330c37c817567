"""What ``%nws status`` shows of the broker a notebook uses: where it is, its process and who
started it (from the record it keeps on this machine, see ``workbench.runtime``), and what it
says of itself (version, clients, workspaces): text as its repr, a table in the notebook."""

from __future__ import annotations

import html
from dataclasses import dataclass

from ..client.workspace import NwsServer
from ..config import STATUS_TIMEOUT
from ..runtime import BrokerRecord, find_broker


@dataclass(frozen=True)
class BrokerSummary:
    """A broker as ``%nws status`` shows it; ``status`` is ``NwsServer.status()``'s record."""

    address: str
    record: BrokerRecord | None  # None: not recorded here (another machine, another user)
    status: dict

    @classmethod
    def of(cls, server: NwsServer, timeout: float = STATUS_TIMEOUT) -> BrokerSummary:
        return cls(server.address, find_broker(server.address), server.status(timeout=timeout))

    def rows(self) -> list[tuple[str, str]]:
        info, record = self.status, self.record
        if record is None:
            process = [("process", "not recorded on this machine (`workbench list`)")]
        else:
            process = [("pid", str(record.pid)), ("started", record.started_local()),
                       ("started by", record.started_by)]
        security = info.get("security", {}).get("mechanism", "NULL")
        return [
            *process,
            ("workbench", f"{info['version']}, protocol {info['protocol']}, "
                          f"up {info['uptime']:.0f} s"),
            ("security", security + (f" ({record.connection_file})"
                                     if record is not None and record.connection_file else "")),
            ("clients", str(len(info["clients"]))),
            ("workspaces", f"{info['workspaces']}, values {info['values']}"),
        ]

    def __repr__(self) -> str:
        rows = self.rows()
        width = max(len(field) for field, _ in rows)
        return "\n".join([f"broker {self.address}",
                          *(f"  {field:<{width}}  {value}" for field, value in rows)])

    def _repr_html_(self) -> str:
        body = "".join(f"<tr><th style=\"text-align:left\">{html.escape(field)}</th>"
                       f"<td style=\"text-align:left\">{html.escape(value)}</td></tr>"
                       for field, value in self.rows())
        return (f"<table><caption>broker {html.escape(self.address)}</caption>"
                f"<tbody>{body}</tbody></table>")
