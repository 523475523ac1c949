"""The private Slurm cluster of tests/slurm_cluster.py: MPI under srun --mpi=pmix,
three emulated nodes, and the node-loss drill (kill_node)."""
import os
import subprocess
import time

import pytest

from slurm_cluster import slurm, slurm3, slurm_factory  # noqa: F401 (fixtures)


def test_srun_pmix_runs_mpi_ranks(slurm, mpi_hello):
    r = slurm.run(["srun", "-n", "2", "--mpi=pmix", mpi_hello], timeout=60)
    assert r.returncode == 0, f"rc {r.returncode}\n{r.stdout}\n{r.stderr}"
    lines = sorted(line for line in r.stdout.splitlines() if line.startswith("rank "))
    assert [line.split()[:6] for line in lines] == [
        ["rank", "0", "size", "2", "sum", "1"], ["rank", "1", "size", "2", "sum", "1"]], r.stdout


def test_client_env_points_at_private_conf(slurm):
    env = slurm.env()
    assert env["SLURM_CONF"] == str(slurm.conf)
    assert not any(k.startswith("SLURM_") and k != "SLURM_CONF" for k in env)
    r = slurm.run(["scontrol", "show", "config"])
    assert r.returncode == 0, r.stderr
    assert f"SlurmctldPort           = {slurm.ctld_port}" in r.stdout
    assert str(slurm.workdir / "state") in r.stdout


def test_three_emulated_nodes(slurm3):
    assert slurm3.node_states() == {"pn1": "idle", "pn2": "idle", "pn3": "idle"}
    r = slurm3.run(["srun", "-N", "3", "-n", "3", "bash", "-c", "echo $SLURM_NODEID $SLURMD_NODENAME"])
    assert r.returncode == 0, r.stderr
    assert sorted(r.stdout.split("\n")[:-1]) == ["0 pn1", "1 pn2", "2 pn3"], r.stdout

    r = slurm3.run(["srun", "--exclude=pn2", "-N", "2", "-n", "2", "bash", "-c", "echo $SLURMD_NODENAME"])
    assert r.returncode == 0, r.stderr
    assert sorted(r.stdout.split()) == ["pn1", "pn3"], r.stdout


def test_kill_node_is_detected(slurm_factory):
    cluster = slurm_factory(nodes=["pn1", "pn2", "pn3"])
    step = subprocess.Popen(["srun", "-N", "3", "-n", "3", "--no-kill", "bash", "-c",
                             "echo $SLURMD_NODENAME ready; exec sleep 120"],
                            env=cluster.env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        ready = [step.stdout.readline().split()[0] for _ in range(3)]
        assert sorted(ready) == ["pn1", "pn2", "pn3"]
        assert cluster.node_processes("pn2"), "no step processes found on pn2"

        t0 = time.monotonic()
        killed = cluster.kill_node("pn2")
        assert cluster.daemon_pids().get("slurmd:pn2") is None
        assert len(killed) >= 3  # slurmd, slurmstepd, task
        assert not cluster.node_processes("pn2"), "pn2's step survived kill_node"
        assert cluster.node_processes("pn1") and cluster.node_processes("pn3")

        state = cluster.wait_node_state("pn2", "down", timeout=cluster.node_loss_timeout)
        detected = time.monotonic() - t0
        print(f"pn2 {state} {detected:.1f} s after kill_node (SlurmdTimeout={cluster.slurmd_timeout}, "
              f"MessageTimeout={cluster.message_timeout})")
        assert state is not None, f"pn2 not down after {detected:.0f} s: {cluster.node_states()}"
        assert state.endswith("*"), state  # not responding
        assert cluster.node_states()["pn1"] != "down"

        # The rest of the cluster still runs steps, and pn2 comes back when its slurmd restarts.
        r = cluster.run(["srun", "-N", "2", "-n", "2", "bash", "-c", "echo $SLURMD_NODENAME"])
        assert r.returncode == 0 and sorted(r.stdout.split()) == ["pn1", "pn3"], (r.stdout, r.stderr)
        cluster.start_node("pn2", timeout=20)
        assert cluster.node_state("pn2") == "idle"
    finally:
        step.kill()
        step.communicate(timeout=30)


def test_stop_leaves_nothing_behind(tmp_path):
    from slurm_cluster import SlurmCluster, SlurmStartError

    cluster = SlurmCluster(tmp_path / "slurm", nodes=["pn1", "pn2"])
    try:
        cluster.start()
    except SlurmStartError as e:
        pytest.skip(f"Slurm cannot start: {e}")
    with cluster:  # already started: the context manager only stops it
        daemons = set(cluster.daemon_pids().values())
        assert len(daemons) == 4  # munged, slurmctld, 2 slurmd
        step = subprocess.Popen(["srun", "-N", "2", "sleep", "300"], env=cluster.env(),
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 20
        while len(cluster.node_processes()) < 5 and time.monotonic() < deadline:  # srun, 2 stepd, 2 sleep
            time.sleep(0.1)
        steps = cluster.node_processes()
        assert len(steps) >= 5, steps
    assert step.wait(60) != 0  # the step ends with the cluster (60 s: a hang guard only)
    for pid in daemons | steps:
        assert not os.path.exists(f"/proc/{pid}") or open(f"/proc/{pid}/stat").read().split(") ")[1][0] == "Z"
    assert not cluster.node_processes()
