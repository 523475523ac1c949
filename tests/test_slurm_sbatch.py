"""scripts/phalanx.sbatch submitted with sbatch to the tests' Slurm cluster (three emulated
nodes on this host), with small settings through its environment variables.

During one job a node's slurmd is killed and started again: the run shrinks and grows back.
Another job is preempted with `scontrol requeue`: Slurm sends SIGTERM and, KillWait seconds
later (the grace time), SIGKILL; the agent stops the ranks after their current step with its
checkpoint committed. The requeued job runs the template again, finds the checkpoints and
resumes by itself; across both runs no sample is lost, and none repeated beyond the one step
a kill may cost. (Two jobs: a node whose slurmd was SIGKILLed keeps its dead step's files in
its spool, and a requeued job's steps, numbered from 0 again, collide with them there.)"""
import json
import pathlib
import re
import subprocess
import time

import pytest

from conftest import ROOT, run
from drills import assert_committed_like, metrics_rows
from shards import structured_text, text_tokens, write_shard
from slurm_cluster import slurm_factory  # noqa: F401 (fixture)

pytestmark = pytest.mark.cluster  # conftest.py: the sanitizer pass leaves these out

MODEL = "--layers 2 --heads 2 --dim 32 --seq-len 16 --micro-batch 2 --global-batch 12"
EXTRA = "--seed 5 --threads 1 --quiet --dp 3"
GLOBAL_BATCH = 12
STEPS = 300
HANG_GUARD_S = 400  # only catches a hang


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("data")
    write_shard(d / "train_000.bin", text_tokens(structured_text(30000, seed=9)))
    write_shard(d / "val_000.bin", text_tokens(structured_text(3000, seed=10)))
    return d


def job_fields(cluster, job_id):
    text = cluster.run(["scontrol", "show", "job", job_id, "-o"]).stdout
    return dict(re.findall(r"(\w+)=(\S*)", text))


def wait_for(predicate, what):
    """Polls the job's own progress (metrics rows, its state), bounded by the hang guard."""
    deadline = time.monotonic() + HANG_GUARD_S
    while not predicate():
        assert time.monotonic() < deadline, f"no {what} within {HANG_GUARD_S} s"
        time.sleep(0.2)


def reference_rows(phalanx, data, path):
    r = run([phalanx, "train", "--data", data / "train_000.bin", *MODEL.split(), *EXTRA.split(),
             "--dp", 1, "--steps", STEPS, "--metrics", path], timeout=HANG_GUARD_S)
    assert r.returncode == 0, r.stderr
    return metrics_rows(path)


def submit(cluster, phalanx, data, out, nodes, per_node, **settings):
    """sbatch scripts/phalanx.sbatch from `out` with the small settings; returns the job id."""
    out.mkdir()
    env = cluster.env({
        "OMPI_MCA_btl_tcp_if_include": "127.0.0.0/8",
        "PHALANX": str(phalanx), "DATA": str(data), "CKPT": str(out / "ckpt"),
        "STEPS": str(STEPS), "MODEL_ARGS": MODEL, "EXTRA_ARGS": EXTRA, "CKPT_EVERY": "1",
        "HEARTBEAT_TIMEOUT": "30", "REJOIN_EVERY": "1", **settings})
    r = cluster.run(["sbatch", "--parsable", "-N", nodes, "--ntasks-per-node", per_node,
                     "--chdir", out, "--output", out / "job-%j.out",
                     ROOT / "scripts" / "phalanx.sbatch"], env=env)
    assert r.returncode == 0, r.stderr
    return r.stdout.strip().split(";")[0]


def wait_for_end(cluster, job_id):
    wait_for(lambda: job_fields(cluster, job_id).get("JobState") in
             ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT"), "the job's end")


def test_the_batch_template_survives_a_node_lost_and_back(phalanx, data, slurm_factory,
                                                          tmp_path):
    # SlurmdTimeout long: the killed node stays in the allocation while its slurmd is away
    cluster = slurm_factory(nodes=["pn1", "pn2", "pn3"], slurmd_timeout=300)
    reference = reference_rows(phalanx, data, tmp_path / "reference.jsonl")
    out = tmp_path / "job"
    # the survivors' attempt outlasts the slurmd restart and two probes (rank 0 sleeps)
    job_id = submit(cluster, phalanx, data, out, 3, 1, LAUNCHER_ARGS="--inject slow:0*10#1")
    metrics = out / f"phalanx-{job_id}.jsonl"
    try:
        wait_for(lambda: len(metrics_rows(metrics)) >= 5, "5 steps")
        cluster.kill_node("pn2")
        wait_for(lambda: any(x["world"] == 2 for x in metrics_rows(metrics)), "a step on 2 ranks")
        cluster.start_node("pn2", wait=False)
        wait_for_end(cluster, job_id)
    finally:
        cluster.run(["scancel", job_id])
    output = (out / f"job-{job_id}.out").read_text()
    assert job_fields(cluster, job_id)["JobState"] == "COMPLETED", output
    assert "with srun in Slurm job" in output and "host pn2 answered 2 probes" in output, output
    report = json.loads((out / f"phalanx-{job_id}-report.json").read_text())
    assert [a["world"] for a in report["attempts"]] == [3, 2, 3], report
    assert report["attempts"][0]["failure"]["node"] == "pn2"
    assert report["grows"][0]["steps_recomputed"] == 0, report
    assert report["samples"]["lost"] == 0 and report["samples"]["duplicated"] == 0
    assert [x["world"] for x in metrics_rows(metrics)][-1] == 3
    assert_committed_like(metrics_rows(metrics), reference, STEPS)


def test_a_requeued_batch_job_resumes_from_its_newest_checkpoint(phalanx, data, slurm_factory,
                                                                tmp_path):
    # KillWait: the grace between SIGTERM and SIGKILL of a requeue
    cluster = slurm_factory(nodes=["pn1"], extra_conf="KillWait=30")
    reference = reference_rows(phalanx, data, tmp_path / "reference.jsonl")
    out = tmp_path / "job"
    job_id = submit(cluster, phalanx, data, out, 1, 3)
    metrics = out / f"phalanx-{job_id}.jsonl"
    try:
        wait_for(lambda: len(metrics_rows(metrics)) >= 20, "20 steps")
        requeue = cluster.run(["scontrol", "requeue", job_id])
        assert requeue.returncode == 0, requeue.stderr
        wait_for(lambda: job_fields(cluster, job_id).get("JobState") == "PENDING",
                 "the requeued job pending")
        first_run = metrics_rows(metrics)
        first_report = json.loads((out / f"phalanx-{job_id}-report.json").read_text())
        # Slurm holds a requeued job back for a while (its BeginTime); an administrator's
        # release, so that the test does not wait
        release = cluster.run(["scontrol", "update", f"JobId={job_id}", "StartTime=now"])
        assert release.returncode == 0, release.stderr
        wait_for_end(cluster, job_id)
    finally:
        cluster.run(["scancel", job_id])
    fields = job_fields(cluster, job_id)
    output = (out / f"job-{job_id}.out").read_text()
    assert fields["JobState"] == "COMPLETED" and fields["Restarts"] == "1", (fields, output)
    assert first_report["outcome"] == "stopped", first_report  # SIGTERM: a clean stop
    report = json.loads((out / f"phalanx-{job_id}-report.json").read_text())
    assert report["outcome"] == "completed" and report["restarts"] == 0, report
    assert "resumed from" in output, output  # by itself: the template found the checkpoints
    second_run = metrics_rows(metrics)[len(first_run):]
    stopped_after = first_run[-1]["step"]
    # a clean stop commits its step: the next run starts after it (a kill: at most one step)
    assert second_run[0]["step"] in (stopped_after + 1, stopped_after), (stopped_after,
                                                                          second_run[0])
    assert_committed_like(metrics_rows(metrics), reference, STEPS)
    assert report["samples"]["lost"] == 0 and report["samples"]["duplicated"] == 0
    print(f"requeue: the first run stopped after step {stopped_after}; the requeued run's "
          f"first step {second_run[0]['step']}")
