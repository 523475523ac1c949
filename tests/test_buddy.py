"""Recovery from memory (issue 18): every tier-1 shard is also kept by a buddy rank on another
host, so a lost host is recovered from the survivors' memory; the durable tier is read only
when memory holds no complete checkpoint. Drills on 3 emulated hosts (scripts/netcluster), one
rank each: rank i's buddy is the rank on the next host (h1 -> h2 -> h3 -> h1)."""
import math
import stat

import pytest

from conftest import ROOT, run
from drills import (HANG_GUARD_S, assert_committed_like, drill_report, fault_free_rows, rows,
                    train_args)
from netcluster import NETCLUSTER, netcluster_factory  # noqa: F401 (fixture)

pytestmark = pytest.mark.cluster  # conftest.py: the sanitizer pass leaves these out

STEPS, FAULT_STEP = 40, 12
DURABLE = 5
# The fault command runs while training goes on: attempt 0's rank 0 sleeps 19 step times after
# each step (no CPU), so the host is surely lost long before the run could end; a lost host is
# told by its unacknowledged pings, so the heartbeat timeout only has to outlast a slow step.
SLOW_FIRST_ATTEMPT = "slow:0*20#0"
HEARTBEAT_TIMEOUT_S = 30
MEMORY = ["--ckpt-every", 1, "--ckpt-durable-every", 1000, "--ckpt-replicate", "on"]
CORPUS = (30000, 9)  # characters, seed: conftest.py's corpus


@pytest.fixture(scope="module")
def reference(phalanx, corpus, tmp_path_factory):
    return fault_free_rows(phalanx, corpus, tmp_path_factory.mktemp("buddy_reference"), STEPS)


def drill(phalanx, cluster, out, corpus, events, *extra, fault_command=None,
          layout=("--dp", 3), slow_first_attempt=True):
    """A drill of one rank per host (3 hosts unless `layout` says more); a drill without a
    fault passes slow_first_attempt=False (nothing has to happen before the run ends)."""
    train = train_args(corpus, out, *layout, "--steps", STEPS, "--ckpt-dir", out / "ckpt",
                       *extra)
    ranks = math.prod(layout[1::2])  # --dp D --pp P ...
    fault = fault_command or f"{NETCLUSTER} {{kind}} {cluster.name} {{host}}"
    slow = [SLOW_FIRST_ATTEMPT] if slow_first_attempt else []
    inject = [a for e in [*events, *slow] for a in ("--inject", e)]
    r = run([phalanx, "drill", "-n", ranks, "--hostfile", cluster.hostfile,
             "--heartbeat-timeout", HEARTBEAT_TIMEOUT_S,
             "--min-ranks", 1, "--fault-command", fault, *inject, "--report", out / "report.json",
             "--", *train], env=cluster.env(), timeout=HANG_GUARD_S)
    return r, drill_report(out)


def assert_durable_step(attempt, out):
    """A durable checkpoint: a multiple of --ckpt-durable-every that was committed before the
    host was lost (how far training got past FAULT_STEP by then depends on the machine); every
    rank of the relaunch read every tensor's parameters, m and v from the durable tier (one
    rank per dp replica, pp 1: the whole model; params.bin is its float32 parameters)."""
    assert attempt["resumed_tier"] == "durable", attempt
    assert attempt["resumed_step"] % DURABLE == 0 and 0 < attempt["resumed_step"] < STEPS, \
        attempt
    model_bytes = (out / "params.bin").stat().st_size
    assert attempt["read_bytes"] == {"own_host_memory": 0, "other_hosts_memory": 0,
                                     "durable": attempt["world"] * 3 * model_bytes}, attempt


def assert_read_from_memory(report, r):
    """The relaunch read its checkpoint from memory only, some of it from another host's
    memory over the network, as rank 0's resume log says; the recovery says the same."""
    second = report["attempts"][1]
    read = second["read_bytes"]
    assert read["own_host_memory"] > 0 and read["other_hosts_memory"] > 0, second
    assert read["durable"] == 0, second
    line = next(x for x in r.stderr.splitlines() if "from memory (tier 1" in x)
    network = int(line.split(" bytes over the network")[0].rsplit(" ", 1)[1])
    assert network == read["other_hosts_memory"], (line, read)
    recovery, = report["recoveries"]
    assert recovery["resumed_tier"] == "memory" and recovery["read_bytes"] == read, recovery


def assert_like_the_reference(out, report, reference):
    assert report["outcome"] == "completed" and report["samples"]["lost"] == 0, report
    assert_committed_like(rows(out), reference, STEPS)


def test_a_lost_host_is_recovered_from_the_buddies_memory(phalanx, corpus, reference,
                                                          netcluster_factory, tmp_path):
    cluster = netcluster_factory(hosts=3)
    r, report = drill(phalanx, cluster, tmp_path, corpus, [f"poweroff:h2@{FAULT_STEP}"],
                      *MEMORY)
    assert r.returncode == 0, r.stdout + r.stderr
    first, second = report["attempts"]
    assert second["resumed_tier"] == "memory", second
    # every memory checkpoint the ranks reported on two hosts before the fault is recovered
    # (a commit not yet reported is fenced off); idle, that is step 11 or 12, but on a loaded
    # machine replication may trail the training by a few steps (replication_lag_max)
    assert second["resumed_step"] == first["replicated_step"], (first, second, r.stderr)
    assert second["resumed_step"] >= FAULT_STEP - 1 - first["replication_lag_max"], first
    # h2's shard came from h3's memory (its buddy copy), over the network to h1's rank
    assert_read_from_memory(report, r)
    assert_like_the_reference(tmp_path, report, reference)


def test_without_replication_a_lost_host_falls_back_to_the_durable_tier(
        phalanx, corpus, reference, netcluster_factory, tmp_path):
    cluster = netcluster_factory(hosts=3)
    r, report = drill(phalanx, cluster, tmp_path, corpus, [f"poweroff:h2@{FAULT_STEP}"],
                      "--ckpt-every", 1, "--ckpt-durable-every", DURABLE, "--ckpt-replicate", "off")
    assert r.returncode == 0, r.stdout + r.stderr
    second = report["attempts"][1]
    assert_durable_step(second, tmp_path)
    assert f"resumed step {second['resumed_step']} from the durable tier" in r.stderr, r.stderr
    assert not list(tmp_path.glob("ckpt/*/buddy_rank_*"))
    assert_like_the_reference(tmp_path, report, reference)


FLIP_EVERY_COPY = """
import glob, sys
sys.path.insert(0, {tests!r})
from h5bytes import flip_data_byte
for copy in glob.glob("/dev/shm/phalanx-*/step_*/buddy_rank_*.h5"):
    flip_data_byte(copy, "params/wte")
"""


def test_a_buddy_copy_with_a_flipped_byte_is_detected_and_not_used(
        phalanx, corpus, reference, netcluster_factory, tmp_path):
    """At the power-off of h2, a byte of every buddy copy on h3 (h2's shards) is flipped: no
    memory checkpoint is whole and sound any more; the checksums say so, the durable tier
    is read."""
    cluster = netcluster_factory(hosts=3)
    flip = tmp_path / "flip.py"
    flip.write_text(FLIP_EVERY_COPY.format(tests=str(ROOT / "tests")))
    script = tmp_path / "fault.sh"
    script.write_text(f"#!/bin/sh\n{NETCLUSTER} \"$@\" || exit 1\n"
                      f"[ \"$1\" = poweroff ] && {NETCLUSTER} exec {cluster.name} h3 -- "
                      f"/usr/bin/python3 {flip}\nexit 0\n")
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    r, report = drill(phalanx, cluster, tmp_path, corpus, [f"poweroff:h2@{FAULT_STEP}"],
                      "--ckpt-every", 1, "--ckpt-durable-every", DURABLE, "--ckpt-replicate", "on",
                      fault_command=f"{script} {{kind}} {cluster.name} {{host}}")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "cannot recover step" in r.stderr and "checksum" in r.stderr.lower(), r.stderr
    assert "holds no complete checkpoint (every complete one failed its checks): reading the " \
        "durable tier" in r.stderr, r.stderr
    second = report["attempts"][1]
    assert_durable_step(second, tmp_path)
    assert_like_the_reference(tmp_path, report, reference)


def two_host_fault(tmp_path, cluster, then):
    """A --fault-command that powers off h2, then runs `then` (a shell line) on h3, h2's buddy."""
    script = tmp_path / "fault.sh"
    script.write_text(f"#!/bin/sh\n{NETCLUSTER} \"$@\" || exit 1\n"
                      f"[ \"$1\" = poweroff ] && {NETCLUSTER} exec {cluster.name} h3 -- {then}\n"
                      "exit 0\n")
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return f"{script} {{kind}} {cluster.name} {{host}}"


def assert_fell_back_because_both_copies_are_gone(r, report, reference, tmp_path, world):
    assert r.returncode == 0, r.stdout + r.stderr
    assert "some shard is in neither its own nor its buddy's memory: a host and its buddy " \
        "host were both lost): reading the durable tier" in r.stderr, r.stderr
    second = report["attempts"][-1]
    assert second["world"] == world, second
    assert_durable_step(second, tmp_path)
    assert_like_the_reference(tmp_path, report, reference)


def test_a_host_lost_with_its_buddys_memory_falls_back_to_the_durable_tier(
        phalanx, corpus, reference, netcluster_factory, tmp_path):
    """h2 powered off and h3's tier 1 emptied at once (as a reboot of h3 leaves it): h2's
    shards are in nobody's memory any more; the durable tier is read and the log says why."""
    cluster = netcluster_factory(hosts=3)
    fault = two_host_fault(tmp_path, cluster,
                           "/bin/sh -c 'rm -rf /dev/shm/phalanx-*/step_*'")
    r, report = drill(phalanx, cluster, tmp_path, corpus, [f"poweroff:h2@{FAULT_STEP}"],
                      "--ckpt-every", 1, "--ckpt-durable-every", DURABLE, "--ckpt-replicate", "on",
                      fault_command=fault)
    assert_fell_back_because_both_copies_are_gone(r, report, reference, tmp_path, world=2)


def powered_off_together(tmp_path, cluster, first, second):
    """A --fault-command whose poweroff of `first` powers off `second` right after it (one
    step, one fault: the failure the agent detects names one of them)."""
    script = tmp_path / "fault.sh"
    script.write_text(f"#!/bin/sh\n{NETCLUSTER} \"$1\" \"$2\" {first} && "
                      f"{NETCLUSTER} \"$1\" \"$2\" {second}\n")
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return f"{script} {{kind}} {cluster.name} {{host}}"


def assert_both_left_out_at_once(r, report, cluster, lost):
    """The failure blames one of the hosts `lost`; the other was found before the relaunch
    (started on the way ranks start), not by a relaunch that failed on it: one relaunch."""
    addresses = {cluster.host(h).address for h in lost}
    blamed = report["attempts"][0]["failure"]["address"]
    checked = {line.split()[3] for line in r.stderr.splitlines()
               if "cannot start a process (checked the way ranks start)" in line}
    assert blamed in addresses and checked == addresses - {blamed}, (blamed, checked, r.stderr)
    assert len(report["attempts"]) == 2, report["attempts"]
    assert report["attempts"][0]["failure"]["other_hosts_found_lost"] == len(lost) - 1, report


def test_a_host_and_its_buddy_powered_off_at_once_fall_back_to_the_durable_tier(
        phalanx, corpus, reference, netcluster_factory, tmp_path):
    """h2 and h3 (h2's buddy) powered off at the same step: the failure names one of them,
    the agent finds the other before relaunching on h1 alone; h2's shards are in nobody's
    memory, so the durable tier is read and the log says why."""
    cluster = netcluster_factory(hosts=3)
    fault = powered_off_together(tmp_path, cluster, "h2", "h3")
    r, report = drill(phalanx, cluster, tmp_path, corpus, [f"poweroff:h2@{FAULT_STEP}"],
                      "--ckpt-every", 1, "--ckpt-durable-every", DURABLE, "--ckpt-replicate", "on",
                      fault_command=fault)
    assert_fell_back_because_both_copies_are_gone(r, report, reference, tmp_path, world=1)
    assert_both_left_out_at_once(r, report, cluster, ["h2", "h3"])


def test_two_hosts_powered_off_at_once_that_are_not_buddies_recover_from_memory(
        phalanx, corpus, reference, netcluster_factory, tmp_path):
    """4 hosts (h1 -> h2 -> h3 -> h4 -> h1): h2 and h4 powered off at the same step. Each one's
    shards are also on the next host (h3, h1), which survives: the relaunch on h1 and h3
    resumes from memory."""
    cluster = netcluster_factory(hosts=4)
    fault = powered_off_together(tmp_path, cluster, "h2", "h4")
    r, report = drill(phalanx, cluster, tmp_path, corpus, [f"poweroff:h2@{FAULT_STEP}"],
                      *MEMORY, fault_command=fault, layout=("--dp", 2, "--pp", 2))
    assert r.returncode == 0, r.stdout + r.stderr
    first, second = report["attempts"]
    assert_both_left_out_at_once(r, report, cluster, ["h2", "h4"])
    assert second["world"] == 2, second
    assert second["resumed_tier"] == "memory", (second, r.stderr)
    assert second["resumed_step"] == first["replicated_step"], (first, second, r.stderr)
    assert_read_from_memory(report, r)
    assert_like_the_reference(tmp_path, report, reference)


def test_a_launch_that_fails_on_a_lost_host_is_retried_without_it(
        phalanx, corpus, reference, netcluster_factory, tmp_path):
    """h3 is off before the run starts: mpirun cannot start its daemon there and the first
    launch fails as a whole; the agent finds h3 lost (the way ranks start) and launches on
    h1 and h2 instead of giving up."""
    cluster = netcluster_factory(hosts=3)
    assert cluster.command("poweroff", "h3").returncode == 0
    r, report = drill(phalanx, cluster, tmp_path, corpus, [], *MEMORY)
    assert r.returncode == 0, r.stdout + r.stderr
    first, second = report["attempts"]
    assert first["failure"]["how"] == "the launch failed: a host is unreachable", first
    assert f"host {cluster.host('h3').address} cannot start a process" in r.stderr, r.stderr
    assert second["world"] == 2, second
    assert_like_the_reference(tmp_path, report, reference)


def test_under_a_slow_link_replication_lags_and_the_run_finishes(
        phalanx, corpus, reference, netcluster_factory, tmp_path):
    """h2's link at 20 Mbit/s: replication may trail the training (the metrics' ckpt_committed
    and the report's replication_lag_max say by how much; nothing asserts a duration); the
    run finishes as the fault-free one and its last checkpoint is durable."""
    cluster = netcluster_factory(hosts=3)
    assert cluster.command("slowlink", "h2", "20mbit").returncode == 0
    r, report = drill(phalanx, cluster, tmp_path, corpus, [], *MEMORY, slow_first_attempt=False)
    assert r.returncode == 0, r.stdout + r.stderr
    attempt, = report["attempts"]
    assert 1 <= attempt["replicated_step"] <= STEPS and attempt["replication_lag_max"] >= 0, \
        attempt
    lags = [x["step"] - x["ckpt_committed"][0] for x in rows(tmp_path)]
    assert min(lags) >= 0, lags  # a memory checkpoint is never ahead of the training
    assert_like_the_reference(tmp_path, report, reference)
    # the last checkpoint reached the durable tier whatever --ckpt-durable-every says
    assert list(tmp_path.glob(f"ckpt/step_{STEPS:08d}*/index.h5")), \
        list((tmp_path / "ckpt").iterdir())


def test_durable_every_sends_only_its_multiples_and_the_last_to_the_durable_tier(
        phalanx, corpus, tmp_path):
    ckpt = tmp_path / "ckpt"
    args = train_args(corpus, tmp_path, "--steps", 7, "--ckpt-dir", ckpt, "--ckpt-every", 1,
                      "--ckpt-durable-every", 3, "--ckpt-keep", 10, "--ckpt-replicate", "on",
                      "--ckpt-memory-dir", tmp_path / "memory")
    r = run([phalanx, "train", *args])
    assert r.returncode == 0, r.stderr
    assert "there is no buddy on another host, so tier 1 is not replicated" in r.stderr
    durable = sorted(p.name for p in ckpt.glob("step_*") if (p / "index.h5").exists())
    assert durable == ["step_00000003", "step_00000006", "step_00000007"], durable


def test_durable_every_must_be_a_multiple_of_every(phalanx, corpus, tmp_path):
    args = train_args(corpus, tmp_path, "--steps", 2, "--ckpt-dir", tmp_path / "ckpt",
                      "--ckpt-every", 2, "--ckpt-durable-every", 3)
    r = run([phalanx, "train", *args])
    assert r.returncode != 0
    assert "--ckpt-durable-every is 3: it must be a multiple of --ckpt-every (2)" in r.stderr
