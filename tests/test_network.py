"""Phalanx across emulated hosts (scripts/netcluster): each host has its own network stack,
address, hostname and /dev/shm; the file system is shared and plays the durable tier.

Multi-host launch: the launcher's channel must listen on and advertise an address the other
hosts reach (a host's own name resolves to loopback on Debian). Layouts across hosts train the
same run as one rank, within float32 reduction noise (1e-5, as tests/test_distributed.py), and a
checkpoint written on one host count resumes on another."""
import os
import re
import signal
import subprocess
import time
from hashlib import sha256

import numpy as np
import pytest

from conftest import processes_naming, run
from drills import (HANG_GUARD_S, assert_committed_like, drill_report, fault_free_rows, rows,
                    train_args)
from netcluster import NETCLUSTER, netcluster_factory  # noqa: F401 (fixture)
from runs import assert_same_run

pytestmark = pytest.mark.cluster  # conftest.py: the sanitizer pass leaves these out

STEPS, HALF = 6, 3
CORPUS = (30000, 9)  # characters, seed: conftest.py's corpus


def on_hosts(phalanx, cluster, ranks, hosts, train, *launcher, env=None):
    """`phalanx run` from the root namespace onto `hosts` (addresses with slots)."""
    return run([phalanx, "run", "-n", ranks, "--hosts", ",".join(hosts), *launcher, "--",
                *train], env=env or cluster.env(), timeout=HANG_GUARD_S)


def params(out):
    return np.fromfile(out / "params.bin", dtype=np.float32)


def test_layouts_across_hosts_train_like_one_rank_and_resume_on_another_host_count(
        phalanx, corpus, netcluster_factory, tmp_path):
    cluster = netcluster_factory(hosts=3, slots=2)
    a = [h.address for h in cluster.hosts]
    reference = tmp_path / "one"
    r = run([phalanx, "train", *train_args(corpus, reference, "--steps", STEPS)])
    assert r.returncode == 0, r.stderr

    out, ckpt = tmp_path / "hosts", tmp_path / "hosts" / "ckpt"
    first_half = ["--steps", HALF, "--train-samples", STEPS * 12, "--ckpt-dir", ckpt,
                  "--ckpt-every", 1]
    r = on_hosts(phalanx, cluster, 4, [f"{a[0]}:2", f"{a[1]}:2"],
                 train_args(corpus, out, "--dp", 2, "--pp", 2, *first_half))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "ranks on hosts: h1 0-1, h2 2-3" in r.stderr  # two ranks on each host
    for step in (HALF - 1, HALF):  # every host wrote its ranks' shards (2 are kept)
        shards = sorted(p.name for p in (ckpt / f"step_{step:08d}").iterdir())
        assert shards == ["index.h5"] + [f"rank_{i:05d}.h5" for i in range(4)], shards
    verify = run([phalanx, "ckpt", "verify", ckpt / f"step_{HALF:08d}"])
    assert verify.returncode == 0, verify.stdout + verify.stderr

    r = on_hosts(phalanx, cluster, 3, a,
                 train_args(corpus, out, "--dp", 3, "--steps", STEPS, "--ckpt-dir", ckpt,
                            "--resume", "latest"))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "ranks on hosts: h1 0, h2 1, h3 2" in r.stderr
    assert "written by dp=2 pp=2 sp=1" in r.stderr
    got, want = rows(out), rows(reference)
    assert [x["step"] for x in got] == list(range(1, STEPS + 1))
    assert [x["samples"] for x in got] == [x["samples"] for x in want]
    assert_same_run((want, params(reference), None), (got, params(out), None), rtol=1e-5)


def test_a_rank_that_cannot_reach_the_channel_says_which_address_and_how_to_fix_it(
        phalanx, corpus, netcluster_factory, tmp_path):
    cluster = netcluster_factory(hosts=2)
    hosts = [h.address for h in cluster.hosts]
    r = on_hosts(phalanx, cluster, 2, hosts, train_args(corpus, tmp_path, "--steps", 1),
                 "--channel-address", "127.0.0.1", "--startup-timeout", 60)
    assert r.returncode != 0
    refused = re.search(r"cannot reach the launcher at 127\.0\.0\.1:[0-9]+ .*Connection refused"
                        r".*--channel-address", r.stderr)
    assert refused, r.stderr


def test_channel_address_must_be_an_address_of_this_host(phalanx, corpus, tmp_path):
    train = train_args(corpus, tmp_path, "--steps", 1)
    for address, problem in [("not-an-address", "is not an IPv4 address"),
                             ("198.51.100.7", "is --channel-address an address of this host")]:
        r = run([phalanx, "run", "-n", 1, "--channel-address", address, "--", *train])
        assert r.returncode == 1 and problem in r.stderr, r.stderr
        assert not (tmp_path / "metrics.jsonl").exists()



def test_ranks_stop_inside_a_long_step_when_their_launcher_is_lost(phalanx, corpus, tmp_path):
    """Step 1 would take 2^30 micro-batches. The launcher is killed during it: the ranks agree
    on the loss between two groups of micro-batches and stop there, not at the step's end."""
    metrics = tmp_path / "metrics.jsonl"  # on the command lines: finds what is left running
    cmd = [phalanx, "run", "-n", 2, "--", "--data", corpus / "train.bin", "--layers", 2, "--heads", 1,
           "--dim", 8, "--seq-len", 8, "--micro-batch", 1, "--threads", 1, "--pp", 2,
           "--steps", 2, "--global-batch", 2 ** 30, "--metrics", metrics]
    launcher = subprocess.Popen([str(c) for c in cmd], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        for line in launcher.stdout:
            if "parameters" in line:
                break
        launcher.kill()  # the launcher only: mpirun and the ranks live on
        _, stderr = launcher.communicate(timeout=HANG_GUARD_S)  # EOF: every rank has exited
    finally:
        if launcher.poll() is None:
            launcher.kill()
        left = processes_naming(str(metrics))
        for pid in left:
            os.kill(pid, signal.SIGKILL)
    assert left == [], f"processes left running: {left}"
    assert stderr.count("the launcher closed the channel; stopping after step 0 without "
                        "another checkpoint") >= 1, stderr
    assert metrics.read_text() == ""


# ----------------------------------------------------------------------------
# faults only a network brings: partition, power-off, slow link (drills)

DRILL_STEPS = 12


def drill_args(corpus, out, *extra):
    return train_args(corpus, out, "--dp", 3, "--steps", DRILL_STEPS, "--ckpt-dir", out / "ckpt",
                      "--ckpt-every", 1, *extra)


@pytest.fixture(scope="module")
def drill_reference(phalanx, corpus, tmp_path_factory):
    """The fault-free run on one rank (any layout trains the same run)."""
    return fault_free_rows(phalanx, corpus, tmp_path_factory.mktemp("drill_reference"),
                           DRILL_STEPS)


# With a fault: the fault command runs while training goes on, so attempt 0's rank 0 sleeps 19
# step times after each step (no CPU) and the host is surely cut before the run could end; a
# lost host is told by its unacknowledged pings, so the heartbeat timeout then only has to
# outlast a slowed step.
SLOW_FIRST_ATTEMPT = "slow:0*20#0"


def network_drill(phalanx, cluster, out, events, *launcher, train):
    fault = f"{NETCLUSTER} {{kind}} {cluster.name} {{host}}"
    if events:
        events, heartbeat_timeout = [*events, SLOW_FIRST_ATTEMPT], 30
    else:
        heartbeat_timeout = 3
    inject = [a for e in events for a in ("--inject", e)]
    r = run([phalanx, "drill", "-n", 3, "--hostfile", cluster.hostfile,
             "--heartbeat-timeout", heartbeat_timeout,
             "--fault-command", fault, *inject, "--report", out / "report.json", *launcher,
             "--", *train],
            env=cluster.env(), timeout=HANG_GUARD_S)
    return r, drill_report(out)


def assert_recovered_like_the_reference(out, report, reference):
    assert report["outcome"] == "completed" and report["samples"]["lost"] == 0, report
    assert report["samples"]["duplicated"] == 0 and report["samples"]["consumed"] == \
        DRILL_STEPS * 12
    assert_committed_like(rows(out), reference, DRILL_STEPS)


def print_recovery(name, report):
    recovery = report["recoveries"][0]
    parts = ("detect_s", "teardown_s", "relaunch_s", "startup_s", "ckpt_load_s")
    print(f"{name}: MTTR {recovery['mttr_s']:.2f} s ("
          + ", ".join(f"{k[:-2]} {recovery.get(k, float('nan')):.3f}" for k in parts)
          + f"), steps recomputed {recovery['steps_recomputed']}")


@pytest.mark.parametrize("kind", ["partition", "poweroff"])
def test_a_lost_host_is_removed_and_the_run_finishes_on_the_survivors(
        phalanx, corpus, drill_reference, netcluster_factory, tmp_path, kind):
    """A partitioned host's processes live on, unreachable; a powered-off host's are gone with
    its memory tier. Either way its TCP connections stay open (no FIN, no RST): the agent
    tells it from its waiting peers by the pings it no longer acknowledges."""
    cluster = netcluster_factory(hosts=3)
    r, report = network_drill(phalanx, cluster, tmp_path, [f"{kind}:h2@4"],
                              train=drill_args(corpus, tmp_path))
    assert r.returncode == 0, r.stdout + r.stderr
    first, second = report["attempts"]
    failure = first["failure"]
    assert (failure["kind"], failure["node"], failure["address"]) == (
        "unreachable", "h2", cluster.host("h2").address), failure
    assert (failure["cause"], failure["host"]) == (kind, "h2"), failure
    assert second["world"] == 2 and second["layout"] == "2x1x1" and second["resume"]
    assert "ranks on hosts: h1 0, h3 1" in r.stderr  # h2 left out of the relaunch
    # h2's own shards of tier 1 are gone with it (or unreachable), but replication is on by
    # default across hosts: h3 keeps a copy of them, so the survivors' memory is read
    # (test_buddy.py: the durable tier without replication, or with a host and its buddy lost)
    assert second["resumed_tier"] == "memory", second
    assert f"resumed step {second['resumed_step']} from the memory tier" in r.stderr
    assert second["read_bytes"]["other_hosts_memory"] > 0, second
    assert second["read_bytes"]["durable"] == 0, second
    assert_recovered_like_the_reference(tmp_path, report, drill_reference)
    print_recovery(f"{kind} drill", report)


def test_a_slow_link_is_no_failure(phalanx, corpus, drill_reference, netcluster_factory,
                                   tmp_path):
    """h2's link shaped to 20 Mbit/s both ways (steps of this model took 2 to 3 times as
    long when measured here; nothing asserts it): no false failure, the same run."""
    cluster = netcluster_factory(hosts=3)
    r = cluster.command("slowlink", "h2", "20mbit")
    assert r.returncode == 0, r.stderr
    r, report = network_drill(phalanx, cluster, tmp_path, [],
                              train=drill_args(corpus, tmp_path))
    assert r.returncode == 0, r.stdout + r.stderr
    assert report["restarts"] == 0 and "detected" not in r.stderr, r.stderr
    assert_recovered_like_the_reference(tmp_path, report, drill_reference)


# ----------------------------------------------------------------------------
# fencing: only the current attempt writes checkpoints

def index_steps(ckpt):
    return sorted(p.name for p in ckpt.glob("step_*") if (p / "index.h5").exists())


def test_an_attempt_below_the_fence_writes_no_checkpoint(phalanx, corpus, tmp_path):
    """The agent writes <ckpt-dir>/fence before each launch; ranks of an older attempt
    (PHALANX_EPOCH below it) write no shard and commit no index."""
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    (ckpt / "fence").write_text("epoch 5\n")
    args = train_args(corpus, tmp_path, "--steps", 3, "--ckpt-dir", ckpt, "--ckpt-every", 1,
                      "--ckpt-memory-dir", "none", "--metrics-overwrite")
    stale = run([phalanx, "train", *args], env=dict(os.environ, PHALANX_EPOCH="4"))
    assert "fenced off by attempt 5" in stale.stderr, stale.stderr
    assert list(ckpt.glob("step_*")) == []  # not even a directory
    current = run([phalanx, "train", *args], env=dict(os.environ, PHALANX_EPOCH="5"))
    assert current.returncode == 0, current.stderr
    assert index_steps(ckpt) == ["step_00000002.e5", "step_00000003.e5"]


def fenced_args(corpus, out, ckpt, steps, keep, *extra):
    return train_args(corpus, out, "--steps", steps, "--ckpt-dir", ckpt, "--ckpt-every", 1,
                      "--ckpt-keep", keep, "--ckpt-memory-dir", "none", "--metrics-overwrite",
                      *extra)


def as_attempt(epoch):
    return dict(os.environ, PHALANX_EPOCH=str(epoch))


def ls_states(phalanx, ckpt):
    """`phalanx ckpt ls`: {directory name: state} of tier 2."""
    r = run([phalanx, "ckpt", "ls", ckpt])
    assert r.returncode == 0, r.stdout + r.stderr
    states = {}
    for line in r.stdout.splitlines():
        fields = line.split()
        if fields and fields[0].isdigit():
            at = next(i for i, f in enumerate(fields) if f.startswith(str(ckpt)))
            states[os.path.basename(fields[at])] = fields[at - 1]
    return states


def test_a_commit_of_an_older_attempt_beyond_the_fence_is_ignored_and_never_pruned_in(
        phalanx, corpus, tmp_path):
    """Attempt 0 committed steps 1..5; attempt 1's fence went up when step 2 was the newest
    complete one, so steps 3..5 of attempt 0 landed after it (a partitioned host's ranks,
    written here in order instead of by a race: the rule holds whatever the timing). Resume,
    ls, verify and pruning all ignore them; attempt 1 resumes from step 2."""
    ckpt, out = tmp_path / "ckpt", tmp_path / "run"
    stale = run([phalanx, "train", *fenced_args(corpus, out, ckpt, 5, 10)], env=as_attempt(0))
    assert stale.returncode == 0, stale.stderr
    (ckpt / "fence").write_text("epoch 0 after -1\nepoch 1 after 2\n")
    states = ls_states(phalanx, ckpt)
    assert states == {f"step_{s:08d}.e0": "complete" if s <= 2 else "fenced"
                      for s in range(1, 6)}, states
    verify = run([phalanx, "ckpt", "verify", ckpt / "step_00000005.e0"])
    assert verify.returncode == 7, verify.stdout + verify.stderr
    assert "attempt 0 wrote step 5 after attempt 1 fenced it off at step 2" in verify.stdout
    whole = run([phalanx, "ckpt", "verify", ckpt])
    assert whole.returncode == 7, whole.stdout + whole.stderr

    out = tmp_path / "attempt1"
    current = run([phalanx, "train", *fenced_args(corpus, out, ckpt, 4, 2, "--resume", "latest")],
                  env=as_attempt(1))
    assert current.returncode == 0, current.stderr
    assert f"resumed from {ckpt}/step_00000002.e0: step 2" in current.stderr, current.stderr
    assert [x["step"] for x in rows(out)] == [3, 4]
    # keep 2 counts valid checkpoints only: attempt 1's steps 3 and 4; the fenced ones of
    # attempt 0 stay invisible beside them (never pruned into their place, never read)
    states = ls_states(phalanx, ckpt)
    assert states == {"step_00000003.e0": "fenced", "step_00000003.e1": "complete",
                      "step_00000004.e0": "fenced", "step_00000004.e1": "complete",
                      "step_00000005.e0": "fenced"}, states
    for step in ("step_00000003.e1", "step_00000004.e1"):
        verify = run([phalanx, "ckpt", "verify", ckpt / step])
        assert verify.returncode == 0, verify.stdout + verify.stderr


def test_an_older_attempt_never_replaces_or_mixes_into_a_newer_attempts_step(
        phalanx, corpus, tmp_path):
    """Attempt 0 wrote step 1; attempt 1 resumed from it and wrote steps 2 and 3. Attempt 0,
    still alive, then writes steps 2 and 3 too (its fence check passed before the fence went
    up: there is no fence file while it runs) and prunes with --ckpt-keep 1: attempt 1's
    files are untouched, byte for byte, and its checkpoints are the ones read."""
    ckpt, out = tmp_path / "ckpt", tmp_path / "run"
    first = run([phalanx, "train", *fenced_args(corpus, out, ckpt, 1, 10)], env=as_attempt(0))
    assert first.returncode == 0, first.stderr
    step1 = next(ckpt.glob("step_*"))
    newer = run([phalanx, "train", *fenced_args(corpus, out, ckpt, 3, 3, "--resume", "latest")],
                env=as_attempt(1))
    assert newer.returncode == 0, newer.stderr
    before = {p: (p.stat().st_ino, p.stat().st_mtime_ns, sha256(p.read_bytes()).hexdigest())
              for p in ckpt.rglob("*") if p.is_file() and p.parent != step1}
    assert len(before) == 4, before  # attempt 1's two shards and two indexes
    stale = run([phalanx, "train", *fenced_args(corpus, out, ckpt, 3, 1, "--resume", step1)],
                env=as_attempt(0))
    assert stale.returncode == 0, stale.stderr
    after = {p: (p.stat().st_ino, p.stat().st_mtime_ns, sha256(p.read_bytes()).hexdigest())
             for p in before if p.exists()}
    assert after == before
    (ckpt / "fence").write_text("epoch 0 after -1\nepoch 1 after 1\n")
    states = ls_states(phalanx, ckpt)
    assert states == {"step_00000002.e1": "complete", "step_00000003.e0": "fenced",
                      "step_00000003.e1": "complete"}, states
    for step in ("step_00000002.e1", "step_00000003.e1"):
        verify = run([phalanx, "ckpt", "verify", ckpt / step])
        assert verify.returncode == 0, verify.stdout + verify.stderr
    resumed = run([phalanx, "train", *fenced_args(corpus, tmp_path / "again", ckpt, 3, 3,
                                                   "--resume", "latest")], env=as_attempt(2))
    assert f"resumed from {ckpt}/step_00000003.e1: step 3" in resumed.stderr, resumed.stderr


def test_a_partitioned_attempt_writes_nothing_after_the_recovery_and_exits_after_the_heal(
        phalanx, corpus, netcluster_factory, tmp_path):
    cluster = netcluster_factory(hosts=3)
    ckpt = tmp_path / "ckpt"
    r, report = network_drill(phalanx, cluster, tmp_path, ["partition:h2@4"],
                              train=drill_args(corpus, tmp_path, "--ckpt-memory-dir", "none"))
    assert r.returncode == 0, r.stdout + r.stderr
    assert report["attempts"][0]["failure"]["cause"] == "partition"
    fence = (ckpt / "fence").read_text().splitlines()
    assert fence[0] == "epoch 0 after -1" and fence[1].startswith("epoch 1 after "), fence
    # what the survivors left; h2's processes of attempt 0 are still there, unreachable
    written = {p: p.stat().st_mtime_ns for p in ckpt.rglob("*")}
    marker = str(tmp_path / "metrics.jsonl")
    stale = processes_naming(marker)
    assert stale, "h2's rank of attempt 0 should live on while partitioned"
    assert cluster.command("heal", "h2").returncode == 0
    deadline = time.monotonic() + HANG_GUARD_S
    while processes_naming(marker) and time.monotonic() < deadline:
        time.sleep(0.5)  # polling for an exit, bounded by the hang guard
    left = processes_naming(marker)
    for pid in left:
        os.kill(pid, signal.SIGKILL)
    assert left == [], "attempt 0's processes did not exit after the heal"
    assert {p: p.stat().st_mtime_ns for p in ckpt.rglob("*")} == written
    for step in index_steps(ckpt):
        verify = run([phalanx, "ckpt", "verify", ckpt / step])
        assert verify.returncode == 0, verify.stdout + verify.stderr
