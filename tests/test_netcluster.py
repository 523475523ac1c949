"""scripts/netcluster: emulated hosts with their own network, hostname and /dev/shm; mpirun
across them through the rsh agent; partition, heal, poweroff, poweron, slowlink; down."""
import ipaddress
import json
import os
import subprocess
import time

import pytest

from netcluster import (NETCLUSTER, STATE_ROOT, netcluster, netcluster_factory,  # noqa: F401
                        parse_up, unique_name)

pytestmark = pytest.mark.cluster  # conftest.py: the sanitizer pass leaves these out

# Connects to ADDRESS:PORT with a short timeout. "open": a listener answered;
# "refused": the host answered (nothing listens); "unreachable": no answer.
PROBE = """
import socket, sys
try:
    with socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=2) as s:
        print("open", s.recv(100).decode().strip())
except ConnectionRefusedError:
    print("refused")
except OSError:
    print("unreachable")
"""
# Listens on PORT of every address of its host, greets each client with the host name.
LISTENER = """
import socket, sys
server = socket.create_server(("", int(sys.argv[1])))
print("listening", flush=True)
while True:
    client, _ = server.accept()
    client.sendall((socket.gethostname() + "\\n").encode())
    client.close()
"""
PORT = 7911
HANG_GUARD_S = 30  # only catches a hang


def probe(cluster, source, address, port=PORT):
    """The PROBE's verdict from host `source` (or the root namespace when source is None)."""
    cmd = ["/usr/bin/python3", "-c", PROBE, address, str(port)]
    r = cluster.exec(source, cmd) if source else subprocess.run(
        cmd, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return r.stdout.strip()


def start_listener(cluster, host):
    listener = cluster.popen(host, ["/usr/bin/python3", "-u", "-c", LISTENER, str(PORT)])
    assert listener.stdout.readline().strip() == "listening", listener.stderr.read()
    return listener


def start_on(cluster, host, script):
    """Starts `sh -c script` on host; returns once it runs there (its first line is read)."""
    process = cluster.popen(host, ["/bin/sh", "-c", f"echo started; {script}"])
    assert process.stdout.readline().strip() == "started", process.stderr.read()
    return process


def probe_until(cluster, source, address, wanted):
    """Probes until the verdict is `wanted` (a link coming up may need a retry); returns it."""
    deadline = time.monotonic() + HANG_GUARD_S
    verdict = probe(cluster, source, address)
    while verdict != wanted and time.monotonic() < deadline:
        verdict = probe(cluster, source, address)
    return verdict


def on_host(cluster, host, script):
    r = cluster.exec(host, ["/bin/sh", "-c", script])
    assert r.returncode == 0, r.stderr
    return r.stdout.strip()


def leftovers(name, links_prefix):
    """The netns, links and state of cluster `name` that still exist."""
    netns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    links = json.loads(subprocess.run(["ip", "-j", "link"], capture_output=True,
                                      text=True).stdout)
    found = [line.split()[0] for line in netns.splitlines() if line.startswith(f"pnc-{name}-")]
    found += [link["ifname"] for link in links if link["ifname"].startswith(links_prefix)]
    if os.path.exists(os.path.join(STATE_ROOT, name)):
        found.append("state dir")
    return found


def running(pid):
    """True while pid is a process that is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def link_prefix(cluster):
    return os.path.commonprefix([h.link for h in cluster.hosts])[:-1]  # "nc<hash>" of "nc<hash>hN"


def test_hosts_have_their_own_name_address_and_shm(netcluster_factory):
    cluster = netcluster_factory(hosts=3, slots=2)
    assert [h.name for h in cluster.hosts] == ["h1", "h2", "h3"]
    addresses = [ipaddress.ip_address(h.address) for h in cluster.hosts]
    assert len(set(addresses)) == 3 and all(a.is_private for a in addresses)
    assert len({ipaddress.ip_network(f"{a}/24", strict=False) for a in addresses}) == 1
    with open(cluster.hostfile) as f:
        assert f.read().split("\n") == [f"{a} slots=2" for a in addresses] + [""]
    shown = netcluster("show", cluster.name)
    assert shown.returncode == 0 and parse_up(shown.stdout) == (cluster.hosts, cluster.hostfile)
    marker = f"netcluster-{unique_name()}"
    for host in cluster.hosts:
        assert on_host(cluster, host.name, "hostname") == host.name
        assert f"inet {host.address}/24" in on_host(cluster, host.name, "ip -4 -o addr show eth0")
        on_host(cluster, host.name, f"echo {host.name} > /dev/shm/{marker}")
    for host in cluster.hosts:  # each host sees only its own file
        assert on_host(cluster, host.name, f"cat /dev/shm/{marker}") == host.name
    assert not os.path.exists(f"/dev/shm/{marker}")  # nor does the root namespace see any


def test_hosts_reach_each_other_over_the_bridge(netcluster_factory):
    cluster = netcluster_factory(hosts=3)
    start_listener(cluster, "h2")
    h2 = cluster.host("h2").address
    assert probe(cluster, "h1", h2) == "open h2"
    assert probe(cluster, "h3", h2) == "open h2"
    assert probe(cluster, None, h2) == "open h2"  # and the root namespace, where mpirun runs


def test_mpirun_runs_ranks_on_two_hosts_through_the_env(netcluster_factory, mpi_hello):
    cluster = netcluster_factory(hosts=2, slots=2)
    env = cluster.env()
    subnet = str(ipaddress.ip_network(f"{cluster.hosts[0].address}/24", strict=False))
    assert (env["NETCLUSTER_HOSTFILE"], env["OMPI_MCA_btl"], env["OMPI_MCA_routed"]) == (
        cluster.hostfile, "self,tcp", "direct")
    assert env["OMPI_MCA_btl_tcp_if_include"] == env["OMPI_MCA_oob_tcp_if_include"] == subnet
    r = subprocess.run(["mpirun", "--allow-run-as-root", "-n", "4", "--hostfile", cluster.hostfile,
                        str(mpi_hello)], env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, f"rc {r.returncode}\n{r.stdout}\n{r.stderr}"
    ranks = sorted(line.split() for line in r.stdout.splitlines() if line.startswith("rank "))
    # rank R size 4 sum 6 host H: the allreduce summed 0+1+2+3, two ranks ran on each host
    assert [(f[1], f[3], f[5], f[7]) for f in ranks] == [
        ("0", "4", "6", "h1"), ("1", "4", "6", "h1"), ("2", "4", "6", "h2"), ("3", "4", "6", "h2")]


def test_partition_cuts_a_host_off_and_heal_restores_it(netcluster_factory):
    cluster = netcluster_factory(hosts=2)
    listener = start_listener(cluster, "h2")
    h2 = cluster.host("h2")
    assert probe(cluster, "h1", h2.address) == "open h2"
    r = cluster.command("partition", "h2")
    assert r.returncode == 0, r.stderr
    assert probe(cluster, "h1", h2.address) == "unreachable"
    assert probe(cluster, None, h2.address) == "unreachable"
    assert listener.poll() is None  # its processes live on
    r = cluster.command("heal", h2.address)  # a host is named by its address too
    assert r.returncode == 0, r.stderr
    assert probe_until(cluster, "h1", h2.address, "open h2") == "open h2"


def test_rsh_to_a_partitioned_host_fails_like_ssh(netcluster_factory):
    cluster = netcluster_factory(hosts=2)
    h2 = cluster.host("h2").address
    assert cluster.command("partition", "h2").returncode == 0
    env = dict(os.environ, NETCLUSTER_RSH_TIMEOUT="1")
    r = netcluster("rsh", cluster.name, h2, "hostname", env=env)
    assert r.returncode == 255 and "Connection timed out" in r.stderr, r
    assert cluster.command("heal", "h2").returncode == 0
    r = netcluster("rsh", cluster.name, h2, "echo", "$(hostname)", env=env)
    assert (r.returncode, r.stdout) == (0, "h2\n"), r.stderr


def test_poweroff_kills_the_host_and_empties_its_shm(netcluster_factory):
    cluster = netcluster_factory(hosts=2)
    for host in ("h1", "h2"):
        on_host(cluster, host, "echo data > /dev/shm/tier1")
    sleeper = start_on(cluster, "h1", "exec sleep 600")
    r = cluster.command("poweroff", "h1")
    assert r.returncode == 0, r.stderr
    sleeper.communicate(timeout=HANG_GUARD_S)
    assert sleeper.returncode == -9
    r = cluster.exec("h1", ["true"])
    assert r.returncode != 0 and "powered off" in r.stderr and "poweron" in r.stderr, r
    assert probe(cluster, "h2", cluster.host("h1").address) == "unreachable"
    r = cluster.command("poweron", "h1")
    assert r.returncode == 0, r.stderr
    assert on_host(cluster, "h1", "hostname; ls -A /dev/shm") == "h1"  # back, memory empty
    assert on_host(cluster, "h2", "cat /dev/shm/tier1") == "data"  # the other host kept its own
    assert probe_until(cluster, "h2", cluster.host("h1").address, "refused") == "refused"


def test_slowlink_shapes_both_ends_of_the_link_with_tbf(netcluster_factory):
    cluster = netcluster_factory(hosts=2)
    h1 = cluster.host("h1")

    def qdiscs():
        root = subprocess.run(["tc", "qdisc", "show", "dev", h1.link], capture_output=True,
                              text=True).stdout
        host = subprocess.run(["tc", "-n", h1.netns, "qdisc", "show", "dev", "eth0"],
                              capture_output=True, text=True).stdout
        return root, host

    r = cluster.command("slowlink", "h1", "10mbit")
    assert r.returncode == 0, r.stderr
    for side in qdiscs():
        assert "qdisc tbf" in side and "rate 10Mbit" in side, side
    assert cluster.command("slowlink", "h1", "off").returncode == 0
    assert not any("tbf" in side for side in qdiscs())


def test_down_removes_hosts_links_state_and_processes(netcluster_factory):
    cluster = netcluster_factory(hosts=2)
    prefix = link_prefix(cluster)
    sleepers = [start_on(cluster, h, "sleep 600 & exec sleep 601") for h in ("h1", "h2")]
    on_hosts = set()  # holders, sleepers and their children
    for host in cluster.hosts:
        pids = subprocess.run(["ip", "netns", "pids", host.netns], capture_output=True, text=True)
        on_hosts |= set(map(int, pids.stdout.split()))
    assert len(on_hosts) >= 6, on_hosts
    r = netcluster("down", cluster.name)
    assert r.returncode == 0, r.stderr
    for sleeper in sleepers:
        sleeper.communicate(timeout=HANG_GUARD_S)
    assert leftovers(cluster.name, prefix) == []
    assert [pid for pid in on_hosts if running(pid)] == []
    assert netcluster("down", cluster.name).returncode == 0  # idempotent


def test_down_cleans_up_after_a_partial_up(netcluster_factory):
    cluster = netcluster_factory(hosts=1)
    prefix = link_prefix(cluster)
    # what an `up` killed half-way leaves: a host's netns and veth pair, but no state
    subprocess.run(["rm", "-rf", os.path.join(STATE_ROOT, cluster.name)], check=True)
    subprocess.run(["ip", "netns", "add", f"pnc-{cluster.name}-h2"], check=True)
    subprocess.run(["ip", "link", "add", f"{prefix}h2", "type", "veth", "peer", "name",
                    f"{prefix}p2"], check=True)
    assert netcluster("down", cluster.name).returncode == 0
    assert leftovers(cluster.name, prefix) == []


def test_down_finds_hosts_by_their_holders_when_state_and_names_are_lost(netcluster_factory):
    cluster = netcluster_factory(hosts=1)
    h1 = cluster.host("h1")
    sleeper = start_on(cluster, "h1", "exec sleep 600")
    on_host1 = subprocess.run(["ip", "netns", "pids", h1.netns], capture_output=True, text=True)
    subprocess.run(["rm", "-rf", os.path.join(STATE_ROOT, cluster.name)], check=True)
    subprocess.run(["umount", "-l", f"/run/netns/{h1.netns}"], check=True)
    os.unlink(f"/run/netns/{h1.netns}")
    assert netcluster("down", cluster.name).returncode == 0
    sleeper.communicate(timeout=HANG_GUARD_S)
    assert [pid for pid in map(int, on_host1.stdout.split()) if running(pid)] == []


def test_up_replaces_a_stale_cluster_of_the_same_name(netcluster_factory):
    cluster = netcluster_factory(hosts=3)
    sleeper = start_on(cluster, "h3", "exec sleep 600")
    again = netcluster("up", cluster.name, 2)
    assert again.returncode == 0, again.stderr
    sleeper.communicate(timeout=HANG_GUARD_S)  # the old host's processes are gone
    assert [line.split()[0] for line in again.stdout.splitlines()] == ["h1", "h2", "hostfile"]
    assert cluster.exec("h3", ["true"]).returncode != 0


@pytest.mark.parametrize("args, message", [
    (["up", "{name}", "0"], "N must be from 1 to 64"),
    (["up", "{name}", "65"], "N must be from 1 to 64"),
    (["up", "{name}", "two"], "N must be a number of hosts"),
    (["up", "bad name", "2"], "bad cluster name"),
    (["exec", "{name}", "h1", "--", "true"], "no cluster"),
    (["partition", "{name}", "h1"], "no cluster"),
    (["env", "{name}"], "no cluster"),
    (["frobnicate", "{name}"], "invalid choice"),
])
def test_bad_input_is_refused_with_a_clear_message(args, message):
    name = unique_name()  # never made: the cluster is unknown
    r = netcluster(*[a.format(name=name) for a in args])
    assert r.returncode != 0 and message in r.stderr, r
    assert not os.path.exists(os.path.join(STATE_ROOT, name))


def test_unknown_host_and_bad_rate_leave_the_cluster_as_it_was(netcluster_factory):
    cluster = netcluster_factory(hosts=2)
    r = cluster.command("partition", "h9")
    assert r.returncode == 1 and "has no host 'h9'" in r.stderr and "h1 (" in r.stderr, r
    r = cluster.command("slowlink", "h1", "fast")
    assert r.returncode == 2 and "bad rate 'fast'" in r.stderr, r
    assert "tbf" not in subprocess.run(["tc", "qdisc", "show", "dev", cluster.host("h1").link],
                                       capture_output=True, text=True).stdout
    assert probe(cluster, "h1", cluster.host("h2").address) == "refused"  # still reachable


def test_without_root_it_says_root_is_needed(netcluster_factory):
    cluster = netcluster_factory(hosts=1)
    # the script comes on stdin: user nobody may not be allowed into the checkout's directory
    as_nobody = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--",
                 "/usr/bin/python3", "-"]
    for args in (["up", unique_name(), "2"], ["partition", cluster.name, "h1"],
                 ["down", cluster.name]):
        with open(NETCLUSTER) as script:
            r = subprocess.run(as_nobody + args, stdin=script, capture_output=True, text=True,
                               cwd="/", timeout=60)
        assert r.returncode == 1 and "needs root" in r.stderr, r
    assert cluster.exec("h1", ["true"]).returncode == 0  # untouched
