"""A private one-host Slurm cluster for the integration tests.

`SlurmCluster(workdir, nodes=["pn1"], cpus_per_node=8)` writes a slurm.conf
into `workdir` and starts its own munged, slurmctld and one slurmd per
emulated node (`slurmd -N NAME`), all on private ports and with every
state/spool/log/pid file, the munge key and the munge socket in private
directories. It never touches /etc/slurm, /etc/munge or /run/munge, so
several clusters may run side by side (and next to a system one).

    with SlurmCluster(tmp_path / "slurm", nodes=["pn1", "pn2"]) as cluster:
        subprocess.run(["srun", "-N", "2", "hostname"], env=cluster.env())

`start()` raises `SlurmStartError` naming the cause (missing binaries,
munged failing, a daemon dying, with the tail of its log) when Slurm cannot
start; that is the only case in which a test may skip (`start_or_skip`).
`stop()` kills every daemon, job step and task of the cluster, bounded in
time; it is idempotent and also runs at interpreter exit.

Pytest use (import the fixtures into the test module):

    from slurm_cluster import slurm, slurm3, slurm_factory

    def test_x(slurm):           # one node "pn1", module scope
        slurm.run(["srun", "-n", "2", "hostname"])
    def test_y(slurm_factory):   # own cluster(s), stopped at teardown
        cluster = slurm_factory(nodes=["pn1", "pn2", "pn3"])

Processes are identified by marker variables in their environment: the
daemons get PHALANX_SLURM_ID (and PHALANX_SLURM_NODE for slurmd), which
slurmstepd inherits from slurmd; tasks and clients carry SLURM_CONF=<this
cluster's slurm.conf>. `kill_node(name)` SIGKILLs one node's slurmd, its
slurmstepds and their process trees, to drill node loss.
"""
import atexit
import ctypes
import os
import pathlib
import random
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import weakref

SLURM_BINARIES = ("munged", "slurmctld", "slurmd", "slurmstepd", "srun", "sinfo", "scontrol")
MARK_ID = "PHALANX_SLURM_ID"
MARK_NODE = "PHALANX_SLURM_NODE"
PORT_RANGE = (20000, 32000)  # below the usual ephemeral range (32768-60999)
MAX_SOCKET_DIR = 60  # sun_path is 108 bytes: keep socket-bearing dirs short

_live = weakref.WeakSet()
_rng = random.SystemRandom()  # independent of any seeding of `random` by tests or plugins


class SlurmStartError(RuntimeError):
    """Slurm could not start here; the message says why."""


def _which(name):
    return shutil.which(name, path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin:/usr/bin")


def _port_free(port):
    """True when nothing listens on (or holds) TCP `port` on any address."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("0.0.0.0", port))
        except OSError:
            return False
    return True


def free_ports(count, rng=None):
    """`count` distinct TCP ports, free at the time of the call, outside the ephemeral range."""
    rng = rng or _rng
    ports = []
    for _ in range(2000):
        port = rng.randrange(*PORT_RANGE)
        if port not in ports and _port_free(port):
            ports.append(port)
            if len(ports) == count:
                return ports
    raise SlurmStartError(f"no {count} free TCP ports in {PORT_RANGE}")


def _pdeathsig():
    """preexec_fn: the daemon gets SIGTERM if the test process dies (even by SIGKILL)."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except Exception:  # noqa: BLE001 - best effort
        pass


def _read_environ(pid):
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            raw = f.read()
    except OSError:
        return None
    env = {}
    for item in raw.split(b"\0"):
        key, sep, value = item.partition(b"=")
        if sep:
            env[key.decode(errors="replace")] = value.decode(errors="replace")
    return env


def _process_table():
    """{pid: ppid} for every visible process."""
    table = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat[stat.rfind(b")") + 2:].split()
        table[int(entry)] = int(fields[1])
    return table


def _descendants(roots, table):
    children = {}
    for pid, ppid in table.items():
        children.setdefault(ppid, []).append(pid)
    out, todo = set(), list(roots)
    while todo:
        pid = todo.pop()
        for child in children.get(pid, ()):
            if child not in out:
                out.add(child)
                todo.append(child)
    return out


def _ancestors(pid, table):
    out = set()
    while pid in table and pid not in out and pid > 1:
        out.add(pid)
        pid = table[pid]
    return out


def _signal(pids, sig):
    for pid in pids:
        try:
            os.kill(pid, sig)
        except OSError:
            pass


def _tail(path, lines=25):
    try:
        text = pathlib.Path(path).read_text(errors="replace")
    except OSError:
        return f"(no log at {path})"
    return "\n".join(text.splitlines()[-lines:]) or f"(empty log {path})"


class _Daemon:
    def __init__(self, name, popen, log, output):
        self.name, self.popen, self.log, self.output = name, popen, log, output

    def alive(self):
        return self.popen.poll() is None

    def tail(self, lines=25):
        out = _tail(self.output, lines) if self.output.exists() and self.output.stat().st_size else ""
        return _tail(self.log, lines) + (f"\n-- stdout/stderr:\n{out}" if out else "")


class SlurmCluster:
    """A private Slurm 22.05 cluster on this host; see the module docstring."""

    def __init__(self, workdir, nodes=("pn1",), cpus_per_node=8, slurmd_timeout=10, message_timeout=5,
                 partition="debug", start_timeout=30.0, extra_conf=""):
        self.workdir = pathlib.Path(workdir).resolve()
        self.nodes = list(nodes)
        if not self.nodes or len(set(self.nodes)) != len(self.nodes):
            raise ValueError(f"nodes must be distinct names, got {nodes!r}")
        self.cpus_per_node = cpus_per_node
        self.slurmd_timeout = slurmd_timeout
        self.message_timeout = message_timeout
        self.partition = partition
        self.start_timeout = start_timeout
        self.extra_conf = extra_conf
        self.conf = self.workdir / "slurm.conf"
        self.hostname = socket.gethostname().split(".")[0]
        self.id = f"{os.getpid()}-{id(self):x}-{_rng.getrandbits(32):08x}"
        self.cluster_name = f"phx{_rng.getrandbits(24):06x}"
        self.ctld_port = None
        self.node_ports = {}
        self._daemons = {}  # "munged" / "slurmctld" / "slurmd:NAME" -> _Daemon
        self._rundir = None  # short directory for the sockets (munge, spool, TmpFS)
        self._own_rundir = False
        self.started = False
        self.forced = []  # daemons that stop() had to SIGKILL after the grace period

    # ------------------------------------------------------------------ paths
    @property
    def rundir(self):
        return self._rundir

    @property
    def munge_socket(self):
        return self._rundir / "munge" / "munge.socket"

    @property
    def node_loss_timeout(self):
        """A safe bound (s) on how long slurmctld takes to mark a killed node down: it pings every
        SlurmdTimeout/3, a ping fails after MessageTimeout, and the node goes DOWN once it has not
        answered for SlurmdTimeout; plus 10 s margin. Measured with the defaults (10, 5): 16-21 s."""
        return self.slurmd_timeout * 4 / 3 + self.message_timeout + 10

    def log_path(self, daemon):
        """Log file of "munged", "slurmctld" or a node name."""
        if daemon == "munged":
            return self.workdir / "log" / "munged.log"
        if daemon == "slurmctld":
            return self.workdir / "log" / "slurmctld.log"
        return self.workdir / "log" / f"slurmd.{daemon}.log"

    # ------------------------------------------------------------ environment
    def env(self, extra=None, base=None):
        """Environment for client commands (srun, sbatch, salloc, squeue, sinfo, scontrol)
        against this cluster: `base` (default os.environ) without any SLURM_* variables
        inherited from an enclosing allocation, plus SLURM_CONF=<private slurm.conf>; as
        root also OMPI_ALLOW_RUN_AS_ROOT(_CONFIRM)=1 so Open MPI ranks may start, and Open MPI's
        shared-memory segments (btl vader) in the cluster's private tmp directory instead of
        /dev/shm, so that ranks killed in a drill leave nothing there. `extra` overrides all."""
        env = {k: v for k, v in (os.environ if base is None else base).items()
               if not k.startswith(("SLURM_", "SLURMD_", "SRUN_", "SALLOC_", "SBATCH_"))
               and k not in (MARK_ID, MARK_NODE)}
        env["SLURM_CONF"] = str(self.conf)
        if os.geteuid() == 0:
            env.setdefault("OMPI_ALLOW_RUN_AS_ROOT", "1")
            env.setdefault("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
        if self._rundir is not None:
            env.setdefault("OMPI_MCA_btl_vader_backing_directory", str(self._rundir / "tmp"))
        env.update(extra or {})
        return env

    def run(self, cmd, timeout=60, env=None, **kwargs):
        """Runs a client command against the cluster; CompletedProcess with text output."""
        kwargs.setdefault("capture_output", True)
        kwargs.setdefault("text", True)
        return subprocess.run([str(c) for c in cmd], env=self.env(env), timeout=timeout, **kwargs)

    # ------------------------------------------------------------------ start
    def _write_conf(self):
        w = self.workdir
        node_lines = "\n".join(
            f"NodeName={n} NodeHostname={self.hostname} NodeAddr=127.0.0.1 Port={self.node_ports[n]} "
            f"CPUs={self.cpus_per_node} State=UNKNOWN" for n in self.nodes)
        self.conf.write_text(f"""\
# Private test cluster {self.id} (tests/slurm_cluster.py)
ClusterName={self.cluster_name}
SlurmctldHost={self.hostname}(127.0.0.1)
SlurmctldPort={self.ctld_port}
SlurmUser={_username()}
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={self.munge_socket}
StateSaveLocation={w}/state
SlurmdSpoolDir={self._rundir}/spool/%n
SlurmctldPidFile={w}/run/slurmctld.pid
SlurmdPidFile={w}/run/slurmd.%n.pid
SlurmctldLogFile={self.log_path("slurmctld")}
SlurmdLogFile={w}/log/slurmd.%n.log
SlurmctldDebug=info
SlurmdDebug=info
TmpFS={self._rundir}/tmp/%n
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/builtin
SwitchType=switch/none
MpiDefault=none
JobCompType=jobcomp/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SlurmdParameters=config_overrides
ReturnToService=2
SlurmdTimeout={self.slurmd_timeout}
SlurmctldTimeout=30
MessageTimeout={self.message_timeout}
KillWait=2
MinJobAge=30
InactiveLimit=0
MailProg=/bin/true
{self.extra_conf}
{node_lines}
PartitionName={self.partition} Nodes=ALL Default=YES MaxTime=INFINITE State=UP OverSubscribe=YES
""")

    def _spawn(self, key, argv, log, extra_env=None):
        output = self.workdir / "log" / f"{key.replace(':', '.')}.out"
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("SLURM_", "SLURMD_", "SRUN_", "SALLOC_", "SBATCH_"))}
        env.update({"SLURM_CONF": str(self.conf), MARK_ID: self.id})
        env.update(extra_env or {})
        with open(output, "ab") as out:
            popen = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                     env=env, cwd=self.workdir, start_new_session=True,
                                     preexec_fn=_pdeathsig)
        self._daemons[key] = _Daemon(key, popen, log, output)
        return self._daemons[key]

    def _check_alive(self, what):
        for d in self._daemons.values():
            if not d.alive():
                raise SlurmStartError(f"{d.name} exited with status {d.popen.returncode} while {what}; "
                                      f"log tail:\n{d.tail()}")

    def _wait(self, what, predicate, timeout):
        deadline = time.monotonic() + timeout
        delay = 0.02
        while True:
            self._check_alive(what)
            result = predicate()
            if result:
                return result
            if time.monotonic() > deadline:
                return None
            time.sleep(delay)
            delay = min(delay * 1.5, 0.2)

    def _start_munged(self):
        mdir = self._rundir / "munge"
        mdir.mkdir(mode=0o700)
        key = mdir / "munge.key"
        with open(key, "wb", opener=lambda p, f: os.open(p, f, 0o600)) as f:
            f.write(os.urandom(1024))
        # -f: munged as root, socket in a directory that is not world-executable.
        self._spawn("munged", [_which("munged"), "-F", "-f", f"--socket={self.munge_socket}",
                               f"--key-file={key}", f"--pid-file={mdir / 'munged.pid'}",
                               f"--log-file={self.log_path('munged')}", f"--seed-file={mdir / 'munged.seed'}",
                               "--num-threads=4"],
                    self.log_path("munged"))
        if not self._wait("starting munged", self.munge_socket.exists, 10):
            raise SlurmStartError(f"munged did not create {self.munge_socket} in 10 s; log tail:\n"
                                  f"{self._daemons['munged'].tail()}")

    def start_node(self, name, wait=True, timeout=None):
        """Starts (or restarts, e.g. after kill_node) the slurmd of node `name`; with `wait`,
        waits until sinfo shows it idle (resuming it if it is down)."""
        if name not in self.nodes:
            raise KeyError(f"no node {name!r} in {self.nodes}")
        (self._rundir / "spool" / name).mkdir(parents=True, exist_ok=True)
        old = self._daemons.get(f"slurmd:{name}")
        if old is not None and old.alive():
            raise RuntimeError(f"slurmd of {name} is already running (pid {old.popen.pid})")
        self._spawn(f"slurmd:{name}", [_which("slurmd"), "-D", "-f", str(self.conf), "-N", name],
                    self.log_path(name), {MARK_NODE: name})
        if wait:
            self.wait_idle([name], timeout or self.start_timeout)

    def start(self):
        """Starts munged, slurmctld and the slurmds; returns self once every node is idle.
        Raises SlurmStartError naming the cause if Slurm cannot start here."""
        if self.started:
            return self
        missing = [b for b in SLURM_BINARIES if not _which(b)]
        if missing:
            raise SlurmStartError(f"Slurm/munge binaries not found: {', '.join(missing)} "
                                  "(Debian: apt-get install slurm-wlm munge)")
        if self.workdir.exists():
            shutil.rmtree(self.workdir)
        for sub in ("state", "log", "run"):
            (self.workdir / sub).mkdir(parents=True)
        os.chmod(self.workdir, 0o700)
        if len(str(self.workdir)) <= MAX_SOCKET_DIR:
            self._rundir, self._own_rundir = self.workdir / "rt", False
            self._rundir.mkdir()
        else:
            self._rundir, self._own_rundir = pathlib.Path(tempfile.mkdtemp(prefix="phx-slurm-")), True
            (self.workdir / "rt").symlink_to(self._rundir)
        (self._rundir / "tmp").mkdir()
        for node in self.nodes:  # TmpFS per node: PMIx keeps a step's files there by name
            (self._rundir / "tmp" / node).mkdir()
        self.started = True  # from here on, stop() has something to clean up
        _live.add(self)
        try:
            self._start_daemons()
        except BaseException:
            self.stop()
            raise
        return self

    def _start_daemons(self, attempts=3):
        self._start_munged()
        for attempt in range(attempts):
            ports = free_ports(1 + len(self.nodes))
            self.ctld_port, self.node_ports = ports[0], dict(zip(self.nodes, ports[1:]))
            self._write_conf()
            try:
                self._spawn("slurmctld", [_which("slurmctld"), "-D", "-f", str(self.conf)],
                            self.log_path("slurmctld"))
                if not self._wait("starting slurmctld", self._ctld_up, self.start_timeout):
                    raise SlurmStartError(f"slurmctld did not answer within {self.start_timeout} s; log tail:\n"
                                          f"{self._daemons['slurmctld'].tail()}")
                for name in self.nodes:
                    self.start_node(name, wait=False)
                self.wait_idle(self.nodes, self.start_timeout)
                return
            except SlurmStartError as e:
                # Another process may have taken a port between the bind test and the daemon's bind.
                if attempt + 1 < attempts and "Address already in use" in str(e):
                    self._stop_slurm_daemons()
                    shutil.rmtree(self.workdir / "state")
                    (self.workdir / "state").mkdir()
                    continue
                raise

    def _ctld_up(self):
        try:
            r = self.run(["scontrol", "ping"], timeout=5)
        except subprocess.TimeoutExpired:
            return False
        return r.returncode == 0 and "UP" in r.stdout

    # ------------------------------------------------------------------ nodes
    def node_states(self):
        """{node name: sinfo state} e.g. "idle", "alloc", "mixed", "down*", "idle*" ("*": not responding)."""
        r = self.run(["sinfo", "-h", "-N", "-o", "%N %T"], timeout=15)
        if r.returncode != 0:
            return {}
        states = {}
        for line in r.stdout.splitlines():
            parts = line.split()
            if len(parts) == 2:
                states[parts[0]] = parts[1]
        return states

    def node_state(self, name):
        return self.node_states().get(name)

    def node_reason(self, name):
        r = self.run(["sinfo", "-h", "-N", "-n", name, "-o", "%E"], timeout=15)
        return r.stdout.strip()

    def wait_idle(self, names=None, timeout=30.0):
        """Waits until every named node (default all) is idle, resuming down/drained ones."""
        names = list(names or self.nodes)
        last = {}

        def ready():
            nonlocal last
            last = self.node_states()
            # Down or drained but responding (no "*"): resume it (ReturnToService=2 usually does).
            down = [n for n in names if last.get(n, "").startswith(("down", "drain"))
                    and not last.get(n, "").endswith("*")]
            if down:
                self.run(["scontrol", "update", f"nodename={','.join(down)}", "state=resume"], timeout=15)
            return all(last.get(n) == "idle" for n in names)

        if not self._wait(f"waiting for nodes {names} to become idle", ready, timeout):
            tails = "\n".join(f"-- slurmd {n}:\n{_tail(self.log_path(n), 10)}" for n in names)
            raise SlurmStartError(f"nodes not idle after {timeout} s: sinfo says {last}; "
                                  f"slurmctld log tail:\n{_tail(self.log_path('slurmctld'), 15)}\n{tails}")

    def wait_node_state(self, name, predicate, timeout):
        """Polls sinfo until predicate(state) holds for node `name`; returns the state, or None on timeout.
        `predicate` may also be a string (a prefix such as "down") or a tuple of prefixes."""
        if isinstance(predicate, (str, tuple)):
            prefixes = predicate
            predicate = lambda s: s is not None and s.startswith(prefixes)  # noqa: E731
        deadline = time.monotonic() + timeout
        while True:
            state = self.node_state(name)
            if predicate(state):
                return state
            if time.monotonic() > deadline:
                return None
            time.sleep(0.25)

    # --------------------------------------------------------------- processes
    def _cluster_processes(self, node=None):
        """PIDs of this cluster's slurmstepds (optionally one node's) and everything under them, plus
        tasks and clients whose environment names this cluster's slurm.conf (all nodes' if node is None).
        Excludes the daemons started by this object with their children (slurmctld's slurmscriptd:
        slurmctld stops it itself) and the calling process and its ancestors."""
        table = _process_table()
        daemons = {d.popen.pid for d in self._daemons.values() if d.alive()}
        skip = _ancestors(os.getpid(), table) | daemons | _descendants(daemons, table)
        conf = str(self.conf)
        roots, direct = set(), set()
        for pid in table:
            if pid in skip:
                continue
            env = _read_environ(pid)
            if not env:
                continue
            if env.get(MARK_ID) == self.id:
                # A slurmd-spawned slurmstepd (or a daemon started by an earlier incarnation).
                if node is None or env.get(MARK_NODE) == node:
                    roots.add(pid)
            elif env.get("SLURM_CONF") == conf:
                if node is None or env.get("SLURMD_NODENAME") == node:
                    direct.add(pid)
        return (roots | direct | _descendants(roots | direct, table)) - skip

    def _kill_tree(self, select, rounds=4):
        """SIGSTOPs then SIGKILLs the processes returned by select(), rescanning so that children
        forked meanwhile are caught too. Returns the pids killed."""
        killed = set()
        for _ in range(rounds):
            pids = select() - killed
            if not pids:
                break
            _signal(pids, signal.SIGSTOP)
            pids |= select()
            _signal(pids, signal.SIGKILL)
            killed |= pids
        return killed

    def kill_node(self, name):
        """SIGKILLs node `name`'s slurmd, its slurmstepds and their tasks (a node-loss drill).
        Returns the sorted pids killed. slurmctld marks the node down* within node_loss_timeout
        seconds (ReturnToService=2: start_node(name) brings it back)."""
        if name not in self.nodes:
            raise KeyError(f"no node {name!r} in {self.nodes}")
        d = self._daemons.get(f"slurmd:{name}")
        pids = set()
        if d is not None and d.alive():
            d.popen.kill()
            pids.add(d.popen.pid)
            try:
                d.popen.wait(5)  # reaped: no longer excluded (with its children) as a live daemon
            except subprocess.TimeoutExpired:
                pass
        pids |= self._kill_tree(lambda: self._cluster_processes(name))
        return sorted(pids)

    def node_processes(self, name=None):
        """PIDs of the job steps of node `name` (all nodes if None): its slurmstepds, their process
        trees, and processes whose environment says SLURM_CONF=<this cluster> (and SLURMD_NODENAME=name)."""
        return self._cluster_processes(name)

    def daemon_pids(self):
        """{"munged"|"slurmctld"|"slurmd:NAME": pid} of the daemons still running."""
        return {k: d.popen.pid for k, d in self._daemons.items() if d.alive()}

    # ------------------------------------------------------------------- stop
    def _stop_slurm_daemons(self):
        self._terminate([k for k in self._daemons if k != "munged"], None)

    def _terminate(self, keys, grace):
        """SIGTERM (or, with grace=None, SIGKILL) the daemons `keys`; SIGKILL any still running after
        `grace` seconds (recorded in self.forced); reap them."""
        daemons = [self._daemons.pop(k) for k in keys if k in self._daemons]
        for d in daemons:
            if d.alive():
                d.popen.terminate() if grace is not None else d.popen.kill()
        deadline = time.monotonic() + (grace or 0.0)
        for d in daemons:
            try:
                d.popen.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                d.popen.kill()
                self.forced.append(d.name)
        for d in daemons:
            try:
                d.popen.wait(5)
            except subprocess.TimeoutExpired:
                pass

    def stop(self, grace=2.0):
        """Kills every job step, task and client of this cluster, then the daemons and their helpers
        (slurmscriptd). slurmctld gets SIGTERM and `grace` seconds (then SIGKILL; `forced` lists it);
        the slurmds get SIGKILL at once: they keep no state worth saving, and a graceful slurmd waits
        for in-flight job-termination RPCs (seconds). Bounded in time (about 1 s; at most a few),
        idempotent, never raises for a dead process."""
        if not self.started:
            return
        self.started = False
        try:
            table = _process_table()
            helpers = _descendants({d.popen.pid for d in self._daemons.values() if d.alive()}, table)
            self._kill_tree(self._cluster_processes)
            # slurmctld first: while the slurmds are up its last RPCs to them do not hang in retries.
            self._terminate(["slurmctld"], grace)
            self._terminate([k for k in self._daemons if k != "munged"], None)
            # A SIGKILLed daemon leaves its helpers behind (slurmscriptd, a half-done stepd launch).
            _signal([p for p in helpers if (_read_environ(p) or {}).get(MARK_ID) == self.id], signal.SIGKILL)
            self._kill_tree(self._cluster_processes)  # steps spawned during shutdown
            self._terminate(list(self._daemons), grace)
        finally:
            _live.discard(self)
            if self._own_rundir and self._rundir is not None:
                shutil.rmtree(self._rundir, ignore_errors=True)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
        return False

    def __repr__(self):
        return f"SlurmCluster({str(self.workdir)!r}, nodes={self.nodes!r}, started={self.started})"


def _username():
    import pwd
    return pwd.getpwuid(os.geteuid()).pw_name


@atexit.register
def _stop_all():
    for cluster in list(_live):
        try:
            cluster.stop()
        except Exception:  # noqa: BLE001
            pass


# ------------------------------------------------------------------- pytest
def start_or_skip(workdir, **kwargs):
    """Starts a SlurmCluster; skips the calling test (printing why) only when Slurm cannot start."""
    import pytest
    cluster = SlurmCluster(workdir, **kwargs)
    try:
        return cluster.start()
    except SlurmStartError as e:
        print(f"Slurm cannot start: {e}")
        pytest.skip(f"Slurm cannot start: {e}")


def _fixtures():
    import pytest

    @pytest.fixture
    def slurm_factory(tmp_path_factory):
        """A function make(nodes=("pn1",), **SlurmCluster kwargs) -> started SlurmCluster (skips the
        test only if Slurm cannot start); every cluster it made is stopped at teardown, whatever the
        test's outcome."""
        made = []

        def make(nodes=("pn1",), **kwargs):
            cluster = SlurmCluster(tmp_path_factory.mktemp("slurm"), nodes=nodes, **kwargs)
            made.append(cluster)
            try:
                return cluster.start()
            except SlurmStartError as e:
                print(f"Slurm cannot start: {e}")
                pytest.skip(f"Slurm cannot start: {e}")

        yield make
        for cluster in made:
            cluster.stop()

    @pytest.fixture(scope="module")
    def slurm(tmp_path_factory):
        """A started one-node cluster (node "pn1", 8 CPUs), shared by the test module."""
        cluster = start_or_skip(tmp_path_factory.mktemp("slurm"), nodes=["pn1"])
        yield cluster
        cluster.stop()

    @pytest.fixture(scope="module")
    def slurm3(tmp_path_factory):
        """A started three-node cluster (pn1, pn2, pn3; 8 CPUs each), shared by the test module."""
        cluster = start_or_skip(tmp_path_factory.mktemp("slurm"), nodes=["pn1", "pn2", "pn3"])
        yield cluster
        cluster.stop()

    return slurm_factory, slurm, slurm3


try:
    slurm_factory, slurm, slurm3 = _fixtures()
except ImportError:  # usable without pytest too
    pass
