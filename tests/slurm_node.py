"""A private single-node Slurm on this machine, for the tests of batch launchers: munged,
slurmctld and slurmd (Debian's ``munge`` and ``slurm-wlm``) run as root in the foreground, with
a generated ``slurm.conf`` and every state, spool, log and pid file in one directory of its own.

``SlurmNode.start(directory)`` returns once the node is idle; ``stop()`` cancels what is still
queued, waits for the jobs' processes to end, and stops the daemons by their pids. Clients
(``sbatch``, ``squeue``, ``scancel``) find this cluster through ``node.env`` (``SLURM_CONF``);
code that runs them from the test's own process (PSI/J does) needs ``SLURM_CONF`` set there too.
Finished jobs stay visible to ``squeue --states=all`` for Slurm's default 300 s.

As a script, ``python -m tests.slurm_node DIRECTORY`` brings a node up, prints the environment
clients need, and stops it on SIGINT or SIGTERM.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

DAEMONS = ("munged", "slurmctld", "slurmd")
CLIENTS = ("sbatch", "squeue", "scancel", "sinfo")
START_TIMEOUT = 30.0
STOP_TIMEOUT = 15.0
PARTITION = "debug"
# Every process of a node carries this in its environment (the daemons are started with it, and
# jobs inherit the submitter's, which ``env`` sets): how ``processes()`` finds what is ours.
MARKER = "WORKBENCH_SLURM_NODE"


class SlurmUnavailable(RuntimeError):
    """A Slurm node cannot be brought up here; the message says what is missing."""


def unavailable_reason() -> str | None:
    """Why a node cannot start on this machine (not root, programs missing), or None."""
    if os.geteuid() != 0:
        return "a Slurm node needs root (munged and slurmd run as root)"
    missing = [name for name in (*DAEMONS, *CLIENTS, "munge") if not _which(name)]
    if missing:
        return (f"{', '.join(missing)} not found; install Debian's slurm-wlm and munge "
                "(`apt-get install slurm-wlm munge`)")
    return None


def _which(name: str) -> str | None:
    # the daemons live in /usr/sbin, which a non-login root shell may not have on PATH
    return shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def node_hardware() -> str:
    """This machine as slurmd sees it (``NodeName=... CPUs=... RealMemory=...``): a node
    configured with more than it finds is drained, so the figures come from slurmd itself."""
    out = subprocess.run([_which("slurmd"), "-C"], capture_output=True, text=True, timeout=30,
                         check=True).stdout
    return next(line for line in out.splitlines() if line.startswith("NodeName="))


def slurm_conf(directory: Path, munge_socket: str, hardware: str, controller_port: int,
               node_port: int, cpus: int | None = None) -> str:
    """The ``slurm.conf`` of a node whose files are all under ``directory``. ``cpus``, when
    given, replaces the CPU count slurmd found (more jobs at once than this machine has cores:
    ``config_overrides`` keeps slurmd from draining the node for it)."""
    fields = dict(item.split("=", 1) for item in hardware.split())
    host = fields.pop("NodeName")
    overrides = ""
    if cpus is not None:
        fields = {"CPUs": str(cpus), "RealMemory": fields["RealMemory"]}
        overrides = "SlurmdParameters=config_overrides\n"
    node = " ".join(f"{key}={value}" for key, value in fields.items())
    return f"""\
# a private single-node cluster (tests/slurm_node.py)
ClusterName=workbench
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={controller_port}
SlurmdPort={node_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={munge_socket}
StateSaveLocation={directory}/state
SlurmdSpoolDir={directory}/spool
SlurmctldPidFile={directory}/slurmctld.pid
SlurmdPidFile={directory}/slurmd.pid
SlurmctldLogFile={directory}/slurmctld.log
SlurmdLogFile={directory}/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
MailProg=/bin/true
# containers: no cgroups, no affinity, no accounting
ProctrackType=proctrack/pgid
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
MpiDefault=none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
# a cancelled job's processes get this long after SIGTERM before SIGKILL
KillWait=2
{overrides}NodeName={host} NodeAddr=127.0.0.1 {node} State=UNKNOWN
PartitionName={PARTITION} Nodes={host} Default=YES MaxTime=INFINITE State=UP
"""


@dataclass
class SlurmNode:
    directory: Path
    munge_dir: Path  # the munge socket's (outside ``directory``: see ``start``)
    env: dict
    # name -> Popen, in the foreground: its stderr in NAME.out (Slurm's own logs: NAME.log)
    daemons: dict = field(default_factory=dict)

    @property
    def conf_path(self) -> Path:
        return self.directory / "slurm.conf"

    @classmethod
    def start(cls, directory: Path, cpus: int | None = None,
              timeout: float = START_TIMEOUT) -> SlurmNode:
        reason = unavailable_reason()
        if reason:
            raise SlurmUnavailable(reason)
        directory = Path(directory).resolve()
        for sub in ("state", "spool", "munge"):
            (directory / sub).mkdir(parents=True, exist_ok=True)
        # munged wants every directory above its socket searchable by all, which a test's
        # private tmp directory (0700) is not; and a Unix socket path is at most 107 bytes
        munge_dir = Path(tempfile.mkdtemp(prefix="munge-"))
        munge_dir.chmod(0o711)
        munge_socket = str(munge_dir / "socket")
        conf = directory / "slurm.conf"
        node = cls(directory, munge_dir, {**os.environ, "SLURM_CONF": str(conf),
                                          MARKER: str(directory)})
        try:
            node._start_munged(munge_socket, timeout)
            conf.write_text(slurm_conf(directory, munge_socket, node_hardware(), free_port(),
                                       free_port(), cpus))
            node._spawn("slurmctld", "-D", "-f", str(conf))
            node._spawn("slurmd", "-D", "-f", str(conf))
            node._wait_until_idle(timeout)
        except BaseException:
            node.stop()
            raise
        return node

    def _spawn(self, daemon: str, *args: str) -> None:
        with open(self.directory / f"{daemon}.out", "ab") as out:
            self.daemons[daemon] = subprocess.Popen(
                [_which(daemon), *args], stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                env=self.env, cwd=self.directory)

    def _start_munged(self, munge_socket: str, timeout: float) -> None:
        key = self.directory / "munge" / "munge.key"
        if not key.exists():
            key.write_bytes(os.urandom(1024))
        key.chmod(0o400)  # munged refuses a key that others may read
        state = self.directory / "munge"
        self._spawn("munged", "--foreground", f"--key-file={key}", f"--socket={munge_socket}",
                    f"--pid-file={state / 'munged.pid'}", f"--seed-file={state / 'munged.seed'}")
        self._wait(lambda: subprocess.run(
            ["munge", "--socket", munge_socket, "--no-input"], capture_output=True,
            env=self.env).returncode == 0, timeout, "munged did not answer", "munged")

    def _wait_until_idle(self, timeout: float) -> None:
        self._wait(lambda: self.run("sinfo", "--noheader", "--format=%t", check=False)
                   .stdout.strip() == "idle", timeout, "the node did not become idle",
                   "slurmctld", "slurmd")

    def _wait(self, ready, timeout: float, what: str, *daemons: str) -> None:
        """Poll ``ready`` until it is true; fail with the daemons' logs if one exits or the
        deadline passes."""
        deadline = time.monotonic() + timeout
        while not ready():
            dead = [name for name in daemons if self.daemons[name].poll() is not None]
            if dead or time.monotonic() > deadline:
                why = f"{', '.join(dead)} exited" if dead else f"not within {timeout} s"
                raise SlurmUnavailable(f"{what} ({why}):\n{self.logs(*daemons)}")
            time.sleep(0.1)

    def logs(self, *daemons: str) -> str:
        """The named daemons' logs (all of them by default), for failure messages."""
        parts = []
        for name in daemons or DAEMONS:
            for path in (self.directory / f"{name}.out", self.directory / f"{name}.log"):
                if path.exists():
                    parts.append(f"--- {path.name}\n{path.read_text(errors='replace')[-4000:]}")
        return "\n".join(parts)

    def run(self, *command: str, check: bool = True,
            timeout: float = 30.0) -> subprocess.CompletedProcess:
        """A Slurm client command against this node (``run("sbatch", "--wrap", "...")``)."""
        return subprocess.run([_which(command[0]) or command[0], *command[1:]], env=self.env,
                              capture_output=True, text=True, timeout=timeout, check=check)

    def squeue(self) -> dict[str, str]:
        """The node's jobs: job id -> state (``PENDING``, ``RUNNING``, ...)."""
        out = self.run("squeue", "--noheader", "--format=%i %T").stdout
        return dict(line.split() for line in out.splitlines() if line.strip())

    def sbatch(self, *args: str) -> str:
        """Submit a job (``sbatch`` arguments); returns its id. Its output goes to the node's
        directory unless ``args`` say otherwise (by default, the submitter's working one)."""
        return self.run("sbatch", "--parsable", f"--output={self.directory}/slurm-%j.out",
                        *args).stdout.strip().split(";")[0]

    def processes(self) -> list[int]:
        """The pids of every live process of this node: its daemons, the jobs' slurmstepd and
        whatever those jobs started (all carry ``MARKER`` in their environment)."""
        marker = f"{MARKER}={self.directory}".encode()
        found = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                environ = (entry / "environ").read_bytes().split(b"\0")
            except OSError:  # exited meanwhile, or a kernel thread
                continue
            if marker in environ and is_running(int(entry.name)):
                found.append(int(entry.name))
        return found

    def stop(self, timeout: float = STOP_TIMEOUT) -> list[int]:
        """Cancel every job, wait for the jobs' processes to end (slurmstepd outlives a killed
        slurmd), then stop slurmd, slurmctld and munged by their pids. Returns the pids of the
        node's processes that were still running after all that and had to be killed (a job
        process that left its process group, say): none, when the node ends as it should."""
        deadline = time.monotonic() + timeout
        if all(name in self.daemons and self.daemons[name].poll() is None
               for name in ("slurmctld", "slurmd")):
            try:
                jobs = list(self.squeue())
                if jobs:
                    self.run("scancel", *jobs, check=False)
                while (self.squeue() or self._steps()) and time.monotonic() < deadline:
                    time.sleep(0.1)
            except (subprocess.SubprocessError, OSError):
                pass  # the controller is not answering: the daemons are stopped regardless
        for name in ("slurmd", "slurmctld", "munged"):
            process = self.daemons.get(name)
            if process is None:
                continue
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
            try:
                process.wait(max(0.5, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        shutil.rmtree(self.munge_dir, ignore_errors=True)
        # nothing of a test's cluster may outlive it
        leftovers = self.processes()
        for pid in leftovers:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        return leftovers

    def _steps(self) -> list[Path]:
        # each running step's slurmstepd keeps a socket in the spool directory until it exits
        return [p for p in (self.directory / "spool").iterdir() if p.is_socket()]


def is_running(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie does not: it only waits to be reaped)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m tests.slurm_node DIRECTORY", file=sys.stderr)
        return 2
    node = SlurmNode.start(Path(argv[0]))
    print(f"SLURM_CONF={node.conf_path}", flush=True)
    stop_requested = []
    signal.signal(signal.SIGTERM, lambda *_: stop_requested.append(True))
    try:
        while not stop_requested:
            signal.pause()
    except KeyboardInterrupt:
        pass
    finally:
        node.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
