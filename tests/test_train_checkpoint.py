"""Checkpoints of real training runs (`phalanx train --ckpt-dir`, `--resume`).

The reference is always a straight run of the same command without a stop.
Tolerances: a resume in the same layout must be bit-exact (the checkpoint
holds every byte of params, m, v and the run state, and the step is
deterministic); a resume in another layout changes only the order of float32
reductions, so losses are held to 1e-5 relative, as in test_distributed.py.
The checkpoint module itself (every byte of every fragment, h5py on the
index, kills mid-flush, full disks) is tested with tests/ckpt_driver.c in
test_checkpoint.py; this file checks that training uses it correctly."""
import contextlib
import json
import os
import shutil
import subprocess

import h5py
import numpy as np
import pytest

from conftest import run
from h5bytes import flip_data_byte
from runs import TIMINGS, assert_same_run
from shards import structured_text, text_tokens, write_shard

MODEL = ["--layers", "4", "--heads", "2", "--dim", "32", "--seq-len", "32", "--seed", "5",
         "--micro-batch", "4", "--global-batch", "16", "--threads", "1", "--quiet",
         "--lr", "3e-3", "--warmup", "2"]
STEPS, HALF = 20, 10
TIMED = TIMINGS


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    d = tmp_path_factory.mktemp("corpus")
    write_shard(d / "train.bin", text_tokens(structured_text(60000, seed=8)))
    return d / "train.bin"


def train(phalanx, out, ranks, layout, *extra, env=None, check=True):
    """One run in `out` (metrics appended to out/metrics.jsonl, final
    parameters in out/params.bin); returns the CompletedProcess."""
    out.mkdir(parents=True, exist_ok=True)
    args = ["--layout", layout, *MODEL, "--metrics", out / "metrics.jsonl",
            "--dump-params", out / "params.bin", *extra]
    cmd = [phalanx, "train"] if ranks == 1 else [phalanx, "run", "-n", ranks, "--"]
    result = run([*cmd, *args], env=dict(os.environ, **(env or {})), timeout=180)
    if check:
        assert result.returncode == 0, result.stdout + result.stderr
    return result


def untimed(metrics):
    return [{k: v for k, v in r.items() if k not in TIMED} for r in metrics]


def rows(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def params(out):
    return np.fromfile(out / "params.bin", dtype=np.float32)


def stopped_half(corpus, ckpt, *extra):
    """The first half of the run: the same schedule (--train-samples of the
    whole run), stopped after HALF steps, checkpointing every 5."""
    return ["--data", corpus, "--steps", HALF, "--train-samples", STEPS * 16,
            "--ckpt-dir", ckpt, "--ckpt-every", 5, "--ckpt-memory-dir", "none", *extra]


def resumed(corpus, ckpt, *extra):
    return ["--data", corpus, "--steps", STEPS, "--ckpt-dir", ckpt, "--ckpt-every", 5,
            "--ckpt-memory-dir", "none", "--resume", "latest", *extra]


@pytest.fixture(scope="module")
def straight(phalanx, corpus, tmp_path_factory):
    """20 steps without a stop, at 1 rank and at dp=2 x pp=2."""
    runs = {}
    for ranks, layout in [(1, "1x1x1"), (4, "2x2x1")]:
        out = tmp_path_factory.mktemp(f"straight{ranks}")
        train(phalanx, out, ranks, layout, "--data", corpus, "--steps", STEPS)
        runs[layout] = out
    return runs


@pytest.fixture(scope="module")
def half_2x2(phalanx, corpus, tmp_path_factory):
    """The first 10 steps at dp=2 x pp=2, checkpoints at steps 5 and 10."""
    out = tmp_path_factory.mktemp("half2x2")
    train(phalanx, out, 4, "2x2x1", *stopped_half(corpus, out / "ckpt"))
    return out


@pytest.mark.parametrize("ranks,layout", [(1, "1x1x1"), (4, "2x2x1")])
def test_resume_in_the_same_layout_is_bit_exact(phalanx, corpus, straight, half_2x2, tmp_path,
                                                ranks, layout):
    out = tmp_path / "run"
    if ranks == 4:
        shutil.copytree(half_2x2, out)
    else:
        train(phalanx, out, ranks, layout, *stopped_half(corpus, out / "ckpt"))
    assert [r["step"] for r in rows(out)] == list(range(1, HALF + 1))
    result = train(phalanx, out, ranks, layout, *resumed(corpus, out / "ckpt"))
    assert "resumed from" in result.stderr and "step_00000010" in result.stderr
    reference = straight[layout]
    assert untimed(rows(out)) == untimed(rows(reference))
    assert np.array_equal(params(out), params(reference))


@pytest.mark.parametrize("ranks,layout", [(4, "4x1x1"), (4, "1x4x1"), (4, "2x1x2")])
def test_resume_in_another_layout_continues_the_run(phalanx, corpus, straight, half_2x2,
                                                    tmp_path, ranks, layout):
    out = tmp_path / "run"
    shutil.copytree(half_2x2, out)
    result = train(phalanx, out, ranks, layout, *resumed(corpus, out / "ckpt"))
    assert "written by dp=2 pp=2 sp=1" in result.stderr
    reference = straight["2x2x1"]
    got = rows(out)[HALF:]
    assert [r["step"] for r in got] == list(range(HALF + 1, STEPS + 1))
    ref_rows, ref_params = rows(reference), params(reference)
    assert_same_run((ref_rows[HALF:], ref_params, None), (got, params(out), None), rtol=1e-5)
    assert [r["samples"] for r in got] == [r["samples"] for r in ref_rows[HALF:]]


def test_h5py_reads_the_model_from_the_index(half_2x2):
    """The index shows every logical tensor whole, straight from h5py."""
    manifest = json.loads((half_2x2 / "params.bin.json").read_text())
    final = params(half_2x2)
    with h5py.File(half_2x2 / "ckpt/step_00000010/index.h5", "r") as index:
        assert index["run"].attrs["step"] == HALF
        for tensor in manifest["tensors"]:
            count = int(np.prod(tensor["shape"]))
            want = final[tensor["offset"]:tensor["offset"] + count].reshape(tensor["shape"])
            got = index["params/" + tensor["name"]][...]
            assert got.dtype == np.float32 and np.array_equal(got, want), tensor["name"]
            assert np.all(index["optim/v/" + tensor["name"]][...] >= 0)
    # the last stage's copy of the tied embedding is the same tensor
    tied = np.fromfile(half_2x2 / "params.bin.tied", dtype=np.float32)
    wte = next(t for t in manifest["tensors"] if t["name"] == "wte")
    assert np.array_equal(tied, final[wte["offset"]:wte["offset"] + tied.size])


def test_sync_mode_writes_the_same_checkpoint(phalanx, corpus, half_2x2, tmp_path):
    out = tmp_path / "sync"
    train(phalanx, out, 4, "2x2x1", *stopped_half(corpus, out / "ckpt", "--ckpt-mode", "sync"))
    assert np.array_equal(params(out), params(half_2x2))
    with h5py.File(out / "ckpt/step_00000010/index.h5", "r") as a, \
            h5py.File(half_2x2 / "ckpt/step_00000010/index.h5", "r") as b:
        for kind in ("params", "optim/m", "optim/v"):
            for name in b[kind]:
                assert np.array_equal(a[kind][name][...], b[kind][name][...]), (kind, name)
    stalls = [r["ckpt_stall_ms"] for r in rows(out)]
    assert stalls[4] > 0 and stalls[9] > 0  # sync: every checkpoint blocks training


def test_progress_line_shows_the_checkpoint_state(phalanx, corpus, tmp_path):
    ckpt = tmp_path / "ckpt"
    cmd = [phalanx, "train", "--data", corpus, *[a for a in MODEL if a != "--quiet"],
           "--steps", 6, "--ckpt-dir", ckpt, "--ckpt-every", 2, "--ckpt-memory-dir", "none",
           "--ckpt-mode", "sync"]
    result = run(cmd)
    assert result.returncode == 0, result.stderr
    lines = [l for l in result.stdout.splitlines() if l.startswith("step")]
    assert "ckpt none yet" in lines[0] and "ckpt 2" in lines[1] and "ckpt 6" in lines[5]
    assert "ckpt off" in run([*cmd[:-8], "--steps", 1]).stdout


def test_kill_during_flush_then_resume_uses_the_previous_checkpoint(phalanx, corpus, straight,
                                                                    tmp_path):
    """Rank 1 is killed half-way through writing its step-10 shard; the resume
    starts from step 5 and the run ends exactly as the straight one."""
    out, ckpt = tmp_path / "run", tmp_path / "run/ckpt"
    result = train(phalanx, out, 4, "2x2x1", *stopped_half(corpus, ckpt),
                   env={"PHALANX_FAULT_KILL_DURING_FLUSH": "10@1"}, check=False)
    assert result.returncode != 0
    assert run([phalanx, "ckpt", "verify", ckpt / "step_00000010"]).returncode == 3
    assert run([phalanx, "ckpt", "verify", ckpt / "step_00000005"]).returncode == 0
    result = train(phalanx, out, 4, "2x2x1", *resumed(corpus, ckpt))
    assert "resumed from" in result.stderr and "step_00000005" in result.stderr
    assert [r["step"] for r in rows(out)][-STEPS + 5:] == list(range(6, STEPS + 1))
    assert np.array_equal(params(out), params(straight["2x2x1"]))


def test_flipped_byte_resume_falls_back_with_a_warning(phalanx, corpus, half_2x2, straight,
                                                       tmp_path):
    out = tmp_path / "run"
    shutil.copytree(half_2x2, out)
    flip_data_byte(out / "ckpt/step_00000010/rank_00002.h5", "params/h.3.mlp.fc.weight")
    verify = run([phalanx, "ckpt", "verify", out / "ckpt/step_00000010"])
    assert verify.returncode == 1 and "/params/h.3.mlp.fc.weight" in verify.stdout
    result = train(phalanx, out, 2, "2x1x1", *resumed(corpus, out / "ckpt"))
    assert "cannot resume from" in result.stderr and "Fletcher32" in result.stderr
    assert "step_00000005" in result.stderr
    ref = rows(straight["2x2x1"])
    assert_same_run((ref[5:], params(straight["2x2x1"]), None),
                    (rows(out)[HALF:], params(out), None), rtol=1e-5)


# ---------------------------------------------------------------------------
# bad inputs: a clear message, a non-zero exit, and the checkpoints untouched

def snapshot_of(directory):
    return {p: (p.stat().st_size, p.stat().st_mtime_ns) for p in directory.rglob("*")}


def refused(phalanx, corpus, ckpt_dir, *args, ranks=1):
    before = snapshot_of(ckpt_dir)
    cmd = [phalanx, "train"] if ranks == 1 else [phalanx, "run", "-n", ranks, "--"]
    result = run([*cmd, "--data", corpus, *MODEL, "--steps", STEPS, *args])
    assert result.returncode != 0, result.stdout
    assert snapshot_of(ckpt_dir) == before, "a refused run changed the checkpoints"
    return result.stderr


@pytest.mark.parametrize("args,message", [
    (["--dim", "64"], "checkpoint has --dim 32, this run has --dim 64"),
    (["--layers", "2"], "checkpoint has --layers 4, this run has --layers 2"),
    (["--seed", "6"], "was written with --seed 5, this run has --seed 6"),
    (["--optim", "adamw"], "holds lamb moments, this run uses --optim adamw"),
])
def test_resume_of_another_run_names_the_difference(phalanx, corpus, half_2x2, args, message):
    ckpt = half_2x2 / "ckpt"
    err = refused(phalanx, corpus, ckpt, "--ckpt-dir", ckpt, "--ckpt-memory-dir", "none",
                  "--resume", "latest", *args)
    assert message in err


def test_resume_of_a_missing_or_partial_checkpoint(phalanx, corpus, half_2x2, tmp_path):
    err = refused(phalanx, corpus, tmp_path, "--resume", tmp_path / "nothing/step_00000010")
    assert "no such file or directory" in err
    partial = tmp_path / "partial"
    shutil.copytree(half_2x2 / "ckpt/step_00000010", partial)
    (partial / "index.h5").unlink()
    assert "never committed" in refused(phalanx, corpus, partial, "--resume", partial)
    empty = tmp_path / "empty"
    empty.mkdir()
    err = refused(phalanx, corpus, empty, "--ckpt-dir", empty, "--ckpt-memory-dir", "none",
                  "--resume", "latest", ranks=2)
    assert "no complete checkpoint" in err
    err = refused(phalanx, corpus, empty, "--resume", "latest")
    assert "--resume latest needs --ckpt-dir" in err


def test_fresh_run_refuses_a_directory_with_checkpoints(phalanx, corpus, half_2x2):
    """...and leaves the run's metrics file as it was (checked with the rest of half_2x2)."""
    ckpt = half_2x2 / "ckpt"
    err = refused(phalanx, corpus, half_2x2, "--ckpt-dir", ckpt, "--ckpt-memory-dir", "none",
                  "--metrics", half_2x2 / "metrics.jsonl", ranks=2)
    assert "already holds checkpoints (the newest complete one is step 10)" in err
    assert "--resume latest" in err


def test_unwritable_ckpt_dir(phalanx, corpus, tmp_path):
    (tmp_path / "plain").write_text("a file, not a directory")
    err = refused(phalanx, corpus, tmp_path, "--ckpt-dir", tmp_path / "plain/ckpt", ranks=2)
    assert "--ckpt-dir" in err and "cannot create directory" in err
    assert (tmp_path / "plain").read_text() == "a file, not a directory"
    assert "--ckpt-mode: 'later' is not a mode" in refused(
        phalanx, corpus, tmp_path, "--ckpt-dir", tmp_path / "c", "--ckpt-mode", "later")


@contextlib.contextmanager
def small_disk(phalanx, corpus, tmp_path, bytes_for):
    """A tmpfs whose size is bytes_for(size of one checkpoint of the tests' model), unmounted
    afterwards even when the test fails; skips where mounting needs a root we are not."""
    probe = tmp_path / "probe"
    train(phalanx, probe, 1, "1x1x1", "--data", corpus, "--steps", 2, "--ckpt-dir",
          probe / "ckpt", "--ckpt-every", 2, "--ckpt-memory-dir", "none")
    size = sum(p.stat().st_size for p in (probe / "ckpt/step_00000002").iterdir())
    full = tmp_path / "full"
    full.mkdir()
    mount = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={bytes_for(size)}",
                            "tmpfs", str(full)], capture_output=True, text=True)
    if mount.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({mount.stderr.strip()}): needs root")
    try:
        yield full
    finally:
        subprocess.run(["umount", str(full)])


def test_no_space_left_during_a_flush_keeps_training(phalanx, corpus, tmp_path):
    with small_disk(phalanx, corpus, tmp_path, lambda size: (5 * size // 2) // 4096 * 4096) \
            as full:
        out = tmp_path / "run"
        result = train(phalanx, out, 1, "1x1x1", "--data", corpus, "--steps", 8,
                       "--ckpt-dir", full, "--ckpt-every", 2, "--ckpt-keep", 5,
                       "--ckpt-memory-dir", "none")
        assert "No space left on device" in result.stderr
        assert "step 6 is not committed to tier 2" in result.stderr
        assert "the last checkpoint did not reach --ckpt-dir" in result.stderr
        assert len(rows(out)) == 8  # training went on to the end
        assert sorted(p.name for p in full.iterdir()) == ["step_00000002", "step_00000004"]
        assert run([phalanx, "ckpt", "verify", full]).returncode == 0


def test_a_run_that_never_committed_fails(phalanx, corpus, tmp_path):
    """Issue 14: a disk too small for any checkpoint said "the newest there is
    step -1" and exited 0."""
    with small_disk(phalanx, corpus, tmp_path, lambda size: max(4096, size // 2)) as full:
        result = train(phalanx, tmp_path / "run", 1, "1x1x1", "--data", corpus, "--steps", 4,
                       "--ckpt-dir", full, "--ckpt-every", 2, "--ckpt-memory-dir", "none",
                       check=False)
        assert result.returncode == 1, result.stderr
        assert "this run committed no checkpoint to --ckpt-dir" in result.stderr
        assert "step -1" not in result.stderr
