"""Elastic in both directions (DESIGN.md "Elasticity"): hosts that come back are probed over
the network and re-admitted at a step boundary, up to --max-ranks, the global batch kept and no
step recomputed; spare hosts of the host list replace lost ones.

Each drill runs on emulated hosts (scripts/netcluster). A grow has to happen before the run
ends: on the survivors, rank 0 is slowed down (slow:0*F#1, it sleeps, which costs no CPU), so
that the steps left after the restore take far longer than the probes (a probe is an mpirun
through the rsh agent: a second or two here). No test asserts a duration."""
import signal
import stat
import subprocess
import threading

import pytest

from conftest import run
from drills import assert_committed_like, committed, drill_report, rows
from netcluster import NETCLUSTER, netcluster_factory  # noqa: F401 (fixture)

pytestmark = pytest.mark.cluster  # conftest.py: the sanitizer pass leaves these out

MODEL = ["--layers", "2", "--heads", "2", "--dim", "32", "--seq-len", "16", "--seed", "5",
         "--micro-batch", "2", "--threads", "1", "--quiet"]
GLOBAL_BATCH = 12
STEPS = 300
HANG_GUARD_S = 400  # only catches a hang
# Attempt 1 lasts long enough for the probes: its steps take 200 times as long (on an idle
# machine about two minutes for the whole attempt, while a grow needs a few probes, and a probe
# that hangs is killed after 30 s; 50 times, about 30 s, was once too short there); a slowed
# step stays far below --heartbeat-timeout (a silent rank has hung), and a lost host is told by
# its unacknowledged pings whatever that timeout is. The attempt ends at the grow, so the
# margin costs nothing when the probes answer.
SLOW_SURVIVORS = "slow:0*200#1"
HEARTBEAT_TIMEOUT_S = 30
CORPUS = (30000, 9)  # characters, seed: conftest.py's corpus


def train_args(corpus, out, *extra, steps=STEPS, global_batch=GLOBAL_BATCH):
    out.mkdir(parents=True, exist_ok=True)
    return ["--data", corpus / "train.bin", *MODEL, "--global-batch", global_batch, "--steps", steps,
            "--metrics", out / "metrics.jsonl", *extra]


@pytest.fixture(scope="module")
def reference(phalanx, corpus, tmp_path_factory):
    """reference(steps): the fault-free run of that many steps on one rank (any layout trains
    the same run; the learning-rate schedule depends on the steps)."""
    made = {}

    def of(steps):
        if steps not in made:
            out = tmp_path_factory.mktemp("reference")
            r = run([phalanx, "train", *train_args(corpus, out, steps=steps)],
                    timeout=HANG_GUARD_S)
            assert r.returncode == 0, r.stderr
            made[steps] = rows(out)
        return made[steps]
    return of


def drill_command(phalanx, cluster, out, ranks, events, *launcher, train, worker=None):
    """The drill's command line and environment."""
    fault = f"{NETCLUSTER} {{kind}} {cluster.name} {{host}}"
    inject = [a for e in events for a in ("--inject", e)]
    extra = ["--worker", worker] if worker else []
    # a probe of a host that is off gives up when the rsh agent does (default 10 s)
    env = dict(cluster.env(), NETCLUSTER_RSH_TIMEOUT="2")
    cmd = [phalanx, "drill", "-n", ranks, "--hostfile", cluster.hostfile,
           "--heartbeat-timeout", HEARTBEAT_TIMEOUT_S, "--rejoin-every", 0.5,
           "--fault-command", fault, *inject, "--report", out / "report.json", *extra, *launcher,
           "--", *train]
    return [str(c) for c in cmd], env


def drill(phalanx, cluster, out, *args, **kwargs):
    cmd, env = drill_command(phalanx, cluster, out, *args, **kwargs)
    r = run(cmd, env=env, timeout=HANG_GUARD_S)
    return r, drill_report(out)


def drill_until(phalanx, cluster, out, said, *args, **kwargs):
    """Runs the drill until its output says `said`, then stops it with SIGTERM (every rank
    stops cleanly, the report is written): whatever the machine's load, the run lasts as long
    as the agent needs. Returns (exit status, everything it wrote to stderr, the report)."""
    cmd, env = drill_command(phalanx, cluster, out, *args, **kwargs)
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)
    lines = []
    timer = threading.Timer(HANG_GUARD_S, proc.kill)  # only catches a hang
    timer.start()
    try:
        for line in proc.stderr:
            lines.append(line)
            if said in line:
                proc.send_signal(signal.SIGTERM)
                break
        lines.extend(proc.stderr)
        proc.wait()
    finally:
        timer.cancel()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return proc.returncode, "".join(lines), drill_report(out)


def assert_same_trajectory(out, report, reference, steps=STEPS):
    assert report["outcome"] == "completed", report
    assert report["samples"]["lost"] == 0 and report["samples"]["duplicated"] == 0, report
    assert report["samples"]["consumed"] == steps * GLOBAL_BATCH, report
    assert_committed_like(rows(out), reference(steps), steps)


def ckpt(out):
    return ["--ckpt-dir", out / "ckpt", "--ckpt-every", 1]


def test_a_host_powered_off_and_back_rejoins_and_the_run_grows_to_its_first_size(
        phalanx, corpus, reference, netcluster_factory, tmp_path):
    """dp=3 on 3 hosts: h3 off after step 8, the run shrinks to 2; h3 on again after step 14,
    answers two probes, and the run grows back to 3 at a step boundary: that step's checkpoint
    committed, resumed, nothing recomputed; the same losses as the fault-free run."""
    cluster = netcluster_factory(hosts=3)
    events = ["poweroff:h3@8", "restore:h3@14#1", SLOW_SURVIVORS]
    r, report = drill(phalanx, cluster, tmp_path, 3, events,
                      train=train_args(corpus, tmp_path, "--dp", 3, *ckpt(tmp_path)))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "poweron of host h3 after step 14" in r.stderr, r.stderr
    assert "host h3 answered 2 probes in a row: healthy again" in r.stderr or \
        f"host {cluster.host('h3').address} answered 2 probes" in r.stderr, r.stderr
    first, survivors, grown = report["attempts"]
    assert first["failure"]["kind"] == "unreachable" and first["failure"]["cause"] == "poweroff"
    assert (survivors["world"], survivors["layout"]) == (2, "2x1x1")
    assert survivors["ended_by"] == "grow" and "failure" not in survivors
    assert (grown["world"], grown["layout"]) == (3, "3x1x1")
    assert "ranks on hosts: h1 0, h2 1, h3 2" in r.stderr.split("growing from 2 to 3")[-1]
    assert len(report["recoveries"]) == 1 and report["restarts"] == 1  # one shrink
    assert len(report["grows"]) == 1, r.stderr
    (grow,) = report["grows"]  # one grow
    assert (grow["world_before"], grow["world_after"], grow["layout_after"]) == (2, 3, "3x1x1")
    assert grow["steps_recomputed"] == 0, grow
    assert grown["resumed_step"] == survivors["last_step"] == grow["stopped_after_step"]
    assert grow["first_step_after"] == grow["stopped_after_step"] + 1
    assert grow["healthy_s"] <= grow["stop_s"] <= grow["first_step_after_s"]
    assert set(grow["steps_per_s"]) == {"before_loss", "survivors", "after_grow"}
    assert_same_trajectory(tmp_path, report, reference)
    # every step says how many ranks trained it
    worlds = {x["step"]: (x["world"], x["layout"]) for x in committed(rows(tmp_path))}
    assert worlds[1] == (3, "3x1x1") and worlds[STEPS] == (3, "3x1x1")
    assert worlds[grow["stopped_after_step"]] == (2, "2x1x1")
    plot = run(["/usr/bin/python3", NETCLUSTER.parent / "plot-drill", tmp_path / "report.json",
                "--out", tmp_path / "drill.png"])
    assert plot.returncode == 0 and (tmp_path / "drill.png").stat().st_size > 0, plot.stderr
    assert "2 -> 3 ranks" in plot.stdout, plot.stdout
    print(f"shrink: MTTR {report['recoveries'][0]['mttr_s']:.2f} s; grow: host healthy to the "
          f"first step in the larger layout {grow['grow_s']:.2f} s; steps/s "
          f"{grow['steps_per_s']}")


def test_a_spare_host_replaces_a_lost_one(phalanx, corpus, reference, netcluster_factory,
                                          tmp_path):
    """3 hosts listed, 2 used (dp=2, --max-ranks 2): losing h2 brings h3 in at the same size;
    h2 coming back finds the run at --max-ranks and stays a spare."""
    cluster = netcluster_factory(hosts=3)
    steps = 40
    r, report = drill(phalanx, cluster, tmp_path, 2, ["poweroff:h2@4"], "--max-ranks", 2,
                      train=train_args(corpus, tmp_path, "--dp", 2, *ckpt(tmp_path),
                                       steps=steps))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "ranks on hosts: h1 0, h2 1" in r.stderr
    first, second = report["attempts"]
    assert first["failure"]["host"] == "h2"
    assert (second["world"], second["layout"]) == (2, "2x1x1")  # never below 2
    assert "ranks on hosts: h1 0, h3 1" in r.stderr
    assert report["grows"] == [] and report["max_ranks"] == 2
    assert_same_trajectory(tmp_path, report, reference, steps=steps)


def answering_worker(phalanx, directory, answers):
    """A worker for --worker: `train` is the real one; `probe` answers (runs the real probe)
    or stays silent as the words of `answers` say, in order, then always answers. Each probe
    appends its host and what it did to probes.log, so the sequence is deterministic."""
    script = directory / "worker"
    log = directory / "probes.log"
    cases = " ".join(f"{i}) what={a};;" for i, a in enumerate(answers))
    script.write_text(f"""#!/bin/sh
if [ "$1" = probe ]; then
    n=$(cat {log} 2>/dev/null | wc -l)
    case $n in {cases} *) what=yes;; esac
    echo "$(hostname) $what" >> {log}
    [ "$what" = yes ] && exec {phalanx} probe
    exit 1
fi
exec {phalanx} "$@"
""")
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return script, log


def test_a_flapping_host_is_readmitted_only_after_two_answers_in_a_row(
        phalanx, corpus, reference, netcluster_factory, tmp_path):
    """h3's probes answer, fail, answer, answer (a host that came back and was lost again
    within the probe window): it is healthy after the fourth probe, not the first."""
    cluster = netcluster_factory(hosts=3)
    worker, log = answering_worker(phalanx, tmp_path, ["yes", "no", "yes", "yes"])
    events = ["poweroff:h3@4", "restore:h3@5#1", SLOW_SURVIVORS]
    r, report = drill(phalanx, cluster, tmp_path, 3, events,
                      train=train_args(corpus, tmp_path, "--dp", 3, *ckpt(tmp_path)),
                      worker=worker)
    assert r.returncode == 0, r.stdout + r.stderr
    assert log.exists(), r.stderr
    probes = log.read_text().split("\n")
    assert [p.split()[1] for p in probes if p][:4] == ["yes", "no", "yes", "yes"], probes
    assert "stopped answering probes" in r.stderr, r.stderr
    assert len(report["grows"]) == 1 and report["grows"][0]["steps_recomputed"] == 0, r.stderr
    assert_same_trajectory(tmp_path, report, reference)


def test_a_healthy_host_that_makes_no_valid_layout_stays_a_spare(
        phalanx, corpus, netcluster_factory, tmp_path):
    """A global batch of 8 on 2 ranks: 3 ranks cannot split it. h3 is lost and replaced by
    nothing (3 hosts, 2 used, --max-ranks 3); when it is back, 3 ranks make no layout: it is
    kept as a spare and the report says why."""
    cluster = netcluster_factory(hosts=3)
    # No grow ends this attempt: the test stops the run once h2 is kept as a spare, so the
    # slowed attempt lasts as long as the probes need, however loaded the machine is.
    events = ["poweroff:h2@4", "restore:h2@6#1", SLOW_SURVIVORS]
    status, stderr, report = drill_until(
        phalanx, cluster, tmp_path, "kept as a spare", 2, events, "--max-ranks", 3,
        train=train_args(corpus, tmp_path, "--dp", 2, *ckpt(tmp_path), global_batch=8))
    assert "kept as a spare" in stderr, stderr
    assert status == 143, stderr  # SIGTERM, sent by the test
    assert report["outcome"] == "stopped", report
    assert report["grows"] == [], report
    assert len(report["spares"]) == 1, stderr
    (spare,) = report["spares"]
    assert spare["host"] == cluster.host("h2").address, spare
    assert "no layout of 3 to 3 rank(s) keeps this run" in spare["why"], spare


def test_max_ranks_below_the_first_launch_is_refused(phalanx, corpus, tmp_path):
    r = run([phalanx, "run", "-n", 2, "--elastic", "--max-ranks", 1, "--",
             *train_args(corpus, tmp_path, "--dp", 2)])
    assert r.returncode == 2, r.stderr
    assert "--max-ranks 1 is below -n 2" in r.stderr
    assert not (tmp_path / "metrics.jsonl").exists()
