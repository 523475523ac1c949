"""Emulated hosts for the integration tests: scripts/netcluster driven from pytest.

    from netcluster import netcluster_factory  # noqa: F401 (fixture)

    def test_x(netcluster_factory):
        cluster = netcluster_factory(hosts=2, slots=2)
        cluster.exec("h1", ["hostname"])                       # CompletedProcess
        subprocess.run(["mpirun", "--hostfile", cluster.hostfile, ...], env=cluster.env())

Each cluster gets a name unique to this pytest process (t<pid>-<n>) and is
removed by the fixture's finalizer, also when the test fails; processes started
on its hosts (`cluster.popen`) die with it. Clusters left behind by an earlier
pytest process that no longer runs (crashed, killed) are removed when the
fixture is first used. Needs root: without it the tests skip, saying so (CI
runs as root).
"""
import itertools
import os
import re
import subprocess
from typing import NamedTuple

import pytest

from conftest import ROOT

NETCLUSTER = ROOT / "scripts" / "netcluster"
STATE_ROOT = "/run/phalanx-netcluster"
TEST_NAME = re.compile(r"^t([0-9]+)-[0-9]+$")
TEST_NETNS = re.compile(r"^pnc-(t[0-9]+-[0-9]+)-h[0-9]+$")
_counter = itertools.count(1)


class Host(NamedTuple):
    name: str
    address: str
    netns: str
    link: str


def netcluster(*args, timeout=120, **kwargs):
    """Runs scripts/netcluster ARGS; returns the CompletedProcess (text), never raises on status."""
    return subprocess.run([str(NETCLUSTER), *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, **kwargs)


def parse_up(stdout):
    """The hosts and the hostfile path from the lines `netcluster up` prints."""
    hosts, hostfile = [], None
    for line in stdout.splitlines():
        fields = line.split()
        if fields[:1] == ["hostfile"] and len(fields) == 2:
            hostfile = fields[1]
        elif len(fields) == 4:
            hosts.append(Host(*fields))
        else:
            raise AssertionError(f"unexpected line from netcluster up: {line!r}")
    return hosts, hostfile


class NetCluster:
    """A cluster made by `netcluster up`; `down()` removes it (idempotent)."""

    def __init__(self, name, hosts, slots):
        self.name = name
        self._started = []
        r = netcluster("up", name, hosts, "--slots", slots)
        if r.returncode != 0:
            netcluster("down", name)
            raise AssertionError(f"netcluster up {name} {hosts} failed ({r.returncode}): "
                                 f"{r.stderr}")
        self.hosts, self.hostfile = parse_up(r.stdout)

    def host(self, name):
        return next(h for h in self.hosts if h.name == name)

    def env(self):
        """os.environ plus what `netcluster env` exports."""
        r = netcluster("env", self.name)
        assert r.returncode == 0, r.stderr
        env = dict(os.environ)
        for line in r.stdout.splitlines():
            key, value = line.removeprefix("export ").split("=", 1)
            env[key] = value.strip("'")
        return env

    def exec(self, host, cmd, timeout=60, **kwargs):
        """Runs cmd on host; returns the CompletedProcess."""
        return netcluster("exec", self.name, host, "--", *cmd, timeout=timeout, **kwargs)

    def popen(self, host, cmd, **kwargs):
        """Starts cmd on host in the background; it is killed at down() at the latest."""
        kwargs.setdefault("stdout", subprocess.PIPE)
        kwargs.setdefault("stderr", subprocess.PIPE)
        process = subprocess.Popen([str(NETCLUSTER), "exec", self.name, host, "--", *cmd],
                                   text=True, **kwargs)
        self._started.append(process)
        return process

    def command(self, *args):
        """Runs `netcluster ARGS[0] NAME ARGS[1:]` (partition, heal, poweroff, ...)."""
        return netcluster(args[0], self.name, *args[1:])

    def down(self):
        r = netcluster("down", self.name)
        for process in self._started:
            if process.poll() is None:
                process.kill()  # only if down could not: it kills every process of the hosts
            process.communicate(timeout=30)
        assert r.returncode == 0, f"netcluster down {self.name}: {r.stderr}"


def _pid_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_orphaned_test_clusters():
    """Downs clusters named t<pid>-<n> whose pytest process is gone (found by state or netns)."""
    names = set(os.listdir(STATE_ROOT)) if os.path.isdir(STATE_ROOT) else set()
    netns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    names |= {m.group(1) for m in map(TEST_NETNS.match, netns.split()) if m}
    for name in names:
        match = TEST_NAME.match(name)
        if match and not _pid_alive(int(match.group(1))):
            netcluster("down", name)


def unique_name():
    return f"t{os.getpid()}-{next(_counter)}"


@pytest.fixture
def netcluster_factory():
    """make(hosts=N, slots=K) -> NetCluster; every cluster made is removed at teardown."""
    if os.geteuid() != 0:
        pytest.skip("netcluster needs root (network namespaces); CI runs the tests as root")
    remove_orphaned_test_clusters()
    made = []

    def make(hosts=2, slots=1):
        cluster = NetCluster(unique_name(), hosts, slots)
        made.append(cluster)
        return cluster

    yield make
    errors = []
    for cluster in made:
        try:
            cluster.down()
        except Exception as error:  # noqa: BLE001 - down the others, then report
            errors.append(error)
    if errors:
        raise errors[0]
