"""workbench.compat: old scripts run unchanged, in real processes against a real broker, with
the old names answered in the script and on its sleigh's workers, and nowhere else."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

import workbench.compat
from workbench.compat.names import FACES

pytestmark = pytest.mark.timeout(120)

TIMEOUT = 60
RUNNER = ("-m", "workbench.compat")
CLI = ("-m", "workbench", "compat")


def write(path, code: str):
    path.write_text(textwrap.dedent(code))
    return path


def run_old(broker, script, *args: str, runner=RUNNER, **env: str):
    """``python -m workbench.compat SCRIPT ARGS...`` (or another runner: ``()`` is plain
    ``python SCRIPT``) with the broker in the environment, as a user would."""
    return subprocess.run([sys.executable, *runner, str(script), *args],
                          env=broker.env(**env), capture_output=True, text=True,
                          timeout=TIMEOUT)


@pytest.fixture
def installed():
    """The old names answered in this process for one test, and no longer after it."""
    workbench.compat.install()
    try:
        yield
    finally:
        workbench.compat.uninstall()


def test_an_old_workspace_script_stores_and_fetches(broker, tmp_path, ws, ws_name):
    script = write(tmp_path / "store.py", """\
        import sys
        import nws.client
        from nws.client import NetWorkSpace, NwsServer, FIFO, LIFO, MULTI, SINGLE

        host, port, name = sys.argv[1], int(sys.argv[2]), sys.argv[3]
        ws = NetWorkSpace(name, host, port)
        ws.declare("stack", LIFO)
        ws.store("stack", 1)
        ws.store("stack", 2)
        print(ws.fetch("stack"), ws.fetch("stack"), isinstance(ws, nws.client.NetWorkSpace))
        ws.store("from_the_old_script", "hello")
        print(NwsServer(host, port).openWs(name).find("from_the_old_script"))
        """)
    done = run_old(broker, script, broker.host, str(broker.port), ws_name)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split("\n")[:2] == ["2 1 True", "hello"]
    assert ws.fetch("from_the_old_script") == "hello"  # on the broker, for anyone


def test_an_old_sleigh_script_whose_tasks_import_nws_on_the_worker(broker, tmp_path):
    write(tmp_path / "old_tasks.py", """\
        import nws.client

        def face_name(x):
            return (x, nws.client.NetWorkSpace.__name__)
        """)
    script = write(tmp_path / "ride.py", """\
        import nws.client as client_module
        from nws.sleigh import Sleigh
        from old_tasks import face_name

        def imports_inside(x):
            import nws.client
            from nws.client import NetWorkSpace
            return x * 2 if nws.client.NetWorkSpace is NetWorkSpace else None

        def module_global(x):
            return client_module.FIFO

        s = Sleigh(workerCount=2)
        try:
            print(s.eachElem(imports_inside, [1, 2, 3]))
            print(s.eachElem(module_global, [1]))
            print(s.eachElem(face_name, [7]))
        finally:
            s.stop()
        """)
    done = run_old(broker, script)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["[2, 4, 6]", "['fifo']", "[(7, 'NetWorkSpace')]"]


def test_old_memcache_wrpme_and_berrymq_scripts(broker, tmp_path):
    script = write(tmp_path / "kv_and_mq.py", """\
        import sys
        import berrymq
        import memcache
        import wrpme

        mc = memcache.Client([sys.argv[1]])
        print(mc.set("old_key", "old value"), mc.get("old_key"), mc.incr("missing"))
        hive = wrpme.RawClient(sys.argv[2], int(sys.argv[3]), workspace="old_hive")
        hive.put("entry", b"bytes")
        print(hive.get("entry"))

        heard = []

        @berrymq.following_function("old:*")
        def hear(message):
            heard.append((message.id, message.args))

        berrymq.twitter("old:said", 1, "two")
        print(heard)
        """)
    done = run_old(broker, script, broker.address, broker.host, str(broker.port))
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["True old value None", "b'bytes'",
                                        "[('old:said', (1, 'two'))]"]


def test_without_the_runner_the_old_names_do_not_exist(broker, tmp_path):
    script = write(tmp_path / "plain.py", """\
        import workbench, workbench.compat
        for name in ("nws", "nws.client", "berrymq", "wrpme"):
            try:
                __import__(name)
            except ImportError:
                print("no", name)
        """)
    done = run_old(broker, script, runner=())
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["no nws", "no nws.client", "no berrymq", "no wrpme"]


def test_a_real_memcache_is_untouched_unless_the_old_names_are_installed(broker, tmp_path):
    fake = tmp_path / "site"
    (fake / "memcache").mkdir(parents=True)
    (fake / "memcache" / "__init__.py").write_text("WHICH = 'the installed python-memcached'\n")
    script = write(tmp_path / "which.py", """\
        import memcache
        print(getattr(memcache, "WHICH", memcache.__name__))
        """)
    path = f"{fake}:{broker.env()['PYTHONPATH']}"
    plain = run_old(broker, script, runner=(), PYTHONPATH=path)
    assert plain.stdout.strip() == "the installed python-memcached", plain.stderr
    ran = run_old(broker, script, PYTHONPATH=path)
    assert ran.stdout.strip() == "workbench.memcache", ran.stderr
    in_process = write(tmp_path / "toggle.py", """\
        import memcache as before
        import workbench.compat
        workbench.compat.install()
        import memcache as during
        workbench.compat.uninstall()
        import memcache as after
        print(before.WHICH, during.__name__, after is before)
        """)
    done = run_old(broker, in_process, runner=(), PYTHONPATH=path)
    assert done.stdout.strip() == "the installed python-memcached workbench.memcache True", \
        done.stderr


def test_the_scripts_exit_status_is_the_runs(broker, tmp_path):
    exits = write(tmp_path / "exits.py", "import sys\nsys.exit(int(sys.argv[1]))\n")
    assert run_old(broker, exits, "7").returncode == 7
    assert run_old(broker, exits, "0").returncode == 0
    fails = write(tmp_path / "fails.py", "raise ValueError('the old script failed')\n")
    done = run_old(broker, fails)
    assert done.returncode == 1
    assert "ValueError: the old script failed" in done.stderr
    missing = run_old(broker, tmp_path / "missing.py")
    assert missing.returncode == 2
    assert "missing.py" in missing.stderr


@pytest.mark.parametrize("runner", [RUNNER, CLI], ids=["python -m workbench.compat",
                                                       "workbench compat"])
def test_the_script_runs_as_main_with_its_arguments(broker, tmp_path, runner):
    write(tmp_path / "sibling.py", "WHERE = 'next to the script'\n")
    script = write(tmp_path / "argv.py", """\
        import sys
        import sibling
        from nws.client import NetWorkSpace
        print(__name__, sys.argv[1:], sibling.WHERE)
        """)
    done = run_old(broker, script, "a", "--flag", "-x", runner=runner)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "__main__ ['a', '--flag', '-x'] next to the script"
    assert done.stdout.strip().startswith("__main__")


def test_the_old_names_and_their_faces(installed):
    import memcache
    import nws
    import nws.client
    import wrpme
    from nws.client import FIFO, LIFO, MULTI, SINGLE, NetWorkSpace, NwsServer
    from nws.sleigh import Sleigh

    import berrymq
    import berrymq.adapter.timer
    import workbench
    import workbench.hive
    import workbench.memcache
    import workbench.mq
    import workbench.mq.adapter.timer
    from workbench.sleigh import Sleigh as WorkbenchSleigh

    assert memcache is workbench.memcache and wrpme is workbench.hive
    assert berrymq.adapter.timer is workbench.mq.adapter.timer
    assert NetWorkSpace is workbench.NetWorkSpace and Sleigh is WorkbenchSleigh
    assert NwsServer is workbench.NwsServer
    assert (FIFO, LIFO, MULTI, SINGLE) == (workbench.FIFO, workbench.LIFO, workbench.MULTI,
                                           workbench.SINGLE)
    assert berrymq.twitter is workbench.mq.twitter and berrymq.Queue is workbench.mq.Queue
    assert nws.__version__ == workbench.__version__ and nws.client.FIFO == FIFO
    assert {"client", "sleigh"} <= set(dir(nws)) and "NetWorkSpace" in dir(nws.client)
    # the faces stay themselves: the old names neither rename them nor grow their attributes
    assert workbench.memcache.__spec__.name == "workbench.memcache"
    assert not hasattr(workbench.mq, "berrymq") and not hasattr(workbench, "nws")
    assert "workbench.compat: workbench" in repr(nws.client)


@pytest.mark.parametrize("name, says", [
    ("nws.babelfish", "babelfish"), ("nws.util", "shutil.which"),
    ("berrymq.jsonrpc.client", "JSON-RPC"), ("berrymq.adapter.growl", "Growl"),
    ("nws.nothing", "no such module"),
])
def test_an_old_module_without_a_face_says_why_and_where_to_read(installed, name, says):
    with pytest.raises(ImportError, match="has no face") as raised:
        __import__(name)
    assert says in str(raised.value) and "docs/compat.md" in str(raised.value)


def test_a_name_the_face_lacks_is_an_attribute_error_naming_the_face(installed):
    import nws.client

    with pytest.raises(AttributeError, match="answered by workbench.*docs/compat.md"):
        nws.client.client  # the workbench's own client package is not an old name


def test_uninstall_forgets_the_old_names(installed):
    assert __import__("nws.client").client.NetWorkSpace

    workbench.compat.uninstall()
    assert not workbench.compat.installed()
    assert not any(name.partition(".")[0] in ("nws", "berrymq") for name in sys.modules)
    with pytest.raises(ImportError):
        __import__("nws")
    workbench.compat.install()  # the fixture uninstalls once more


def test_every_face_exists():
    import importlib.util

    for old, face in FACES.items():
        assert importlib.util.find_spec(face.module) is not None, old


# What NetWorkSpaces' own examples and tests import from nws.sleigh, beyond Sleigh.
OLD_SLEIGH_NAMES = ("sshcmd", "rshcmd", "defaultSleighOptions", "SleighException",
                    "SleighIllegalValueException", "SleighPending", "SleighResultIterator",
                    "SleighTaskException")


@pytest.mark.parametrize("name", OLD_SLEIGH_NAMES)
def test_the_old_sleigh_modules_names(installed, name):
    import workbench.sleigh

    if not hasattr(workbench.sleigh, name):
        pytest.skip(f"workbench.sleigh has no {name} yet")
    import nws.sleigh

    assert getattr(nws.sleigh, name) is getattr(workbench.sleigh, name)
    assert name in dir(nws.sleigh)
