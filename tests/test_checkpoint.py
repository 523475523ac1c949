"""Checkpoints across processes: resharding under mpirun, h5py on the index,
`phalanx ckpt ls|verify|inspect`, a flipped byte, a kill in the middle of a
flush, a full disk, and the bad inputs of a resume.

tests/ckpt_driver.c writes checkpoints of a small GPT's tensor table from a
fake training loop (every element of step s is value(name, kind, s, index))
and reads them back in any layout, checking every element bit for bit."""
import json
import os
import shutil
import subprocess

import h5py
import numpy as np
import pytest

from conftest import run
from h5bytes import flip_data_byte

MODEL = ["--layers", "4", "--heads", "2", "--dim", "32", "--vocab", "256", "--seq-len", "32"]
KINDS = ["params", "optim/m", "optim/v"]
M32 = 0xFFFFFFFF


def expected(name, kind, step, count):
    """numpy twin of value() in ckpt_driver.c: floats in [2, 4) from a hash."""
    h = 2166136261
    for c in name.encode():
        h = ((h ^ c) * 16777619) & M32
    seed = (h ^ ((kind * 0x9E3779B9) & M32) ^ ((step * 0x85EBCA6B) & M32)) & M32
    x = (seed + np.arange(count, dtype=np.uint64) * 0x27D4EB2D) & M32
    x ^= x >> np.uint64(15)
    x = (x * 0x2C1B3C6D) & M32
    x ^= x >> np.uint64(12)
    return (np.uint64(0x40000000) | (x & np.uint64(0x7FFFFF))).astype(np.uint32).view(np.float32)


@pytest.fixture(scope="session")
def driver(build_dir):
    return str(build_dir / "tests" / "ckpt_driver")


def launch(driver, ranks, *args, env=None):
    cmd = [driver, *args]
    if ranks > 1:
        root = ["--allow-run-as-root"] if os.geteuid() == 0 else []
        cmd = ["mpirun", "-n", ranks, "--oversubscribe", "--bind-to", "none", *root,
               "-x", "PHALANX_FAULT_KILL_DURING_FLUSH", *cmd]
    full_env = dict(os.environ, **(env or {}))
    full_env.setdefault("PHALANX_FAULT_KILL_DURING_FLUSH", "")
    return run(cmd, env=full_env, timeout=120)


def write(driver, ranks, layout, ckpt, memory, *extra, env=None):
    return launch(driver, ranks, "write", "--dir", ckpt, "--memory-dir", memory,
                  "--layout", layout, *MODEL, *extra, env=env)


def read(driver, ranks, layout, ckpt, memory="none", *extra):
    """Resumes and checks every element; returns (result, the JSON line or None)."""
    result = launch(driver, ranks, "read", "--dir", ckpt, "--memory-dir", memory,
                    "--layout", layout, *MODEL, *extra)
    lines = [line for line in result.stdout.splitlines() if line.startswith("{")]
    return result, json.loads(lines[-1]) if lines else None


def steps_in(directory):
    return sorted(p.name for p in directory.iterdir() if p.name.startswith("step_"))


@pytest.fixture(scope="module")
def written(driver, tmp_path_factory):
    """Steps 2, 4, 6 written at dp=2 x pp=2 (wte on the first and last stage), async."""
    base = tmp_path_factory.mktemp("written")
    ckpt, memory = base / "ckpt", base / "shm"
    result = write(driver, 4, "2x2x1", ckpt, memory, "--steps", "6", "--every", "2",
                   "--keep", "2", "--mode", "async", "--work-ms", "5")
    assert result.returncode == 0, result.stdout + result.stderr
    stats = json.loads(result.stdout.splitlines()[-1])
    assert stats["committed"] == [3, 3] and stats["failed"] == [0, 0]
    return ckpt, memory


def test_keep_and_tier1_cleanup(written):
    ckpt, memory = written
    assert steps_in(ckpt) == ["step_00000004", "step_00000006"]
    assert not memory.exists()  # a successful run leaves no tier 1 behind
    files = sorted(p.name for p in (ckpt / "step_00000006").iterdir())
    assert files == ["index.h5"] + [f"rank_{r:05d}.h5" for r in range(4)]


@pytest.mark.parametrize("ranks,layout", [(1, "1x1x1"), (4, "4x1x1"), (4, "1x4x1"),
                                          (2, "1x1x2"), (4, "1x2x2"), (3, "3x1x1")])
def test_reshard_bit_identical(driver, written, ranks, layout):
    ckpt, _ = written
    result, state = read(driver, ranks, layout, ckpt)
    assert result.returncode == 0, result.stdout + result.stderr
    assert state["bad"] == 0 and state["tensors"] > 0
    assert state["path"].endswith("step_00000006")
    assert (state["step"], state["sample_cursor"]) == (6, 48)
    assert state["seed"] == 0xFEEDFACECAFEBEEF
    assert state["writer"] == [2, 2, 1, 4]
    assert state["noise_scale"] == 3.0 and state["optimizer"] == "lamb"


def test_h5py_reads_whole_tensors_from_the_index(written):
    step = written[0] / "step_00000006"
    with h5py.File(step / "index.h5", "r") as f:
        names = sorted(f["params"].keys())
        assert len(names) == 2 + 12 * 4 + 2
        assert f["params/h.3.mlp.fc.weight"].shape == (128, 32)
        for name in names:
            for kind, group in enumerate(KINDS):
                data = f[f"{group}/{name}"][...]
                want = expected(name, kind, 6, data.size).reshape(data.shape)
                assert data.tobytes() == want.tobytes(), f"{group}/{name}"
        run_state = f["run"].attrs
        # strings are fixed-length (never in HDF5's unchecksummed global heap): h5py gives bytes
        assert (run_state["step"], run_state["dim"], run_state["optimizer"]) == (6, 32, b"lamb")
        assert f["run/extra"].attrs["batch.noise_scale"] == 3.0
        wte = [row for row in f["fragments"][...] if row["name"] == b"wte"]
        assert len(wte) == 4  # two replicas on each of the two stages that hold it
        assert sorted(int(r["rank"]) for r in wte) == [0, 1, 2, 3]
    with h5py.File(step / "rank_00002.h5", "r") as shard:
        d = shard["optim/v/wte"]  # rank 2 = first replica of the last stage
        assert d.fletcher32 and d.attrs["logical_name"] == b"wte"
        assert list(d.attrs["logical_shape"]) == [256, 32]
        assert list(d.attrs["offset"]) == [128, 0] and d.shape == (64, 32)


def test_h5py_shows_a_missing_shard_as_nan(written, tmp_path):
    step = tmp_path / "step"
    shutil.copytree(written[0] / "step_00000006", step)
    (step / "rank_00001.h5").unlink()  # wte: 4 holders, rank 1 wrote rows 64..127
    with h5py.File(step / "index.h5", "r") as f:
        wte = f["params/wte"][...]
    assert np.isnan(wte[64:128]).all()
    assert not np.isnan(wte[:64]).any() and not np.isnan(wte[128:]).any()


def test_sync_mode_writes_the_same_tensors(driver, written, tmp_path):
    result = write(driver, 4, "2x2x1", tmp_path / "sync", "none", "--steps", "6", "--every",
                   "2", "--keep", "2", "--mode", "sync")
    assert result.returncode == 0, result.stderr
    with h5py.File(written[0] / "step_00000006/index.h5", "r") as a, \
            h5py.File(tmp_path / "sync/step_00000006/index.h5", "r") as b:
        assert a["fragments"][...].tobytes() == b["fragments"][...].tobytes()
        for group in KINDS:
            for name in a[group]:
                assert a[f"{group}/{name}"][...].tobytes() == b[f"{group}/{name}"][...].tobytes()


def test_ckpt_ls_inspect_verify(phalanx, written):
    ckpt = written[0]
    ls = run([phalanx, "ckpt", "ls", ckpt])
    assert ls.returncode == 0, ls.stderr
    rows = [line.split() for line in ls.stdout.splitlines() if line.strip()[:1].isdigit()]
    assert [(r[0], r[5]) for r in rows] == [("4", "complete"), ("6", "complete")]
    inspect = run([phalanx, "ckpt", "inspect", ckpt / "step_00000006"])
    assert inspect.returncode == 0, inspect.stderr
    assert "step           6" in inspect.stdout
    assert "dp 2 x pp 2 x sp 1 (4 ranks)" in inspect.stdout
    assert "batch.noise_scale = 3" in inspect.stdout
    assert "h.3.mlp.fc.weight" in inspect.stdout and "[128, 32]" in inspect.stdout
    verify = run([phalanx, "ckpt", "verify", ckpt / "step_00000006"])
    assert verify.returncode == 0, verify.stdout + verify.stderr
    assert "every checksum good" in verify.stdout
    assert run([phalanx, "ckpt", "verify", ckpt]).returncode == 0  # every step in it
    assert run([phalanx, "ckpt", "frobnicate", ckpt]).returncode == 2


def test_flipped_byte_is_named_and_skipped(phalanx, driver, written, tmp_path):
    ckpt = tmp_path / "ckpt"
    shutil.copytree(written[0], ckpt)
    flip_data_byte(ckpt / "step_00000006/rank_00003.h5", "optim/m/h.3.mlp.fc.weight")
    verify = run([phalanx, "ckpt", "verify", ckpt / "step_00000006"])
    assert verify.returncode == 1
    assert "rank_00003.h5: /optim/m/h.3.mlp.fc.weight: data error detected by Fletcher32" \
        in verify.stdout
    assert run([phalanx, "ckpt", "verify", ckpt / "step_00000004"]).returncode == 0
    # resume: the newest fails its checksum on the rank that reads it; all fall back
    result, state = read(driver, 2, "1x2x1", ckpt)
    assert result.returncode == 0, result.stderr
    assert state["step"] == 4 and state["bad"] == 0
    assert "cannot resume from" in result.stderr and "Fletcher32" in result.stderr


@pytest.mark.parametrize("ranks,fault", [(2, "4@1"), (1, "4:1")])
def test_kill_during_flush_keeps_the_previous_checkpoint(phalanx, driver, tmp_path, ranks,
                                                         fault):
    ckpt, memory = tmp_path / "ckpt", tmp_path / "shm"
    layout = f"{ranks}x1x1"
    result = write(driver, ranks, layout, ckpt, memory, "--steps", "6", "--every", "2",
                   "--keep", "3", env={"PHALANX_FAULT_KILL_DURING_FLUSH": fault})
    assert result.returncode != 0  # killed
    verify_2 = run([phalanx, "ckpt", "verify", ckpt / "step_00000002"])
    assert verify_2.returncode == 0, verify_2.stdout
    if fault == "4@1":
        # rank 1 died half-way through its tier-2 shard of step 4: never committed
        assert steps_in(ckpt) == ["step_00000002", "step_00000004"]
        assert run([phalanx, "ckpt", "verify", ckpt / "step_00000004"]).returncode == 3
        ls = run([phalanx, "ckpt", "ls", ckpt]).stdout
        assert any(line.split()[:1] == ["4"] and "incomplete" in line
                   for line in ls.splitlines())
        # tier 1 had committed step 4 before the crash, and survives it
        _, state = read(driver, 1, "1x1x1", ckpt, memory)
        assert state["step"] == 4 and state["path"].startswith(str(memory))
    else:
        assert not (ckpt / "step_00000004").exists()  # killed in tier 1, before tier 2
    result, state = read(driver, 1, "1x1x1", ckpt)  # without tier 1
    assert result.returncode == 0, result.stderr
    assert state["step"] == 2 and state["bad"] == 0


def test_default_tier1_lives_in_dev_shm(phalanx, driver, tmp_path):
    ckpt = tmp_path / "ckpt"
    result = launch(driver, 1, "write", "--dir", ckpt, "--layout", "1x1x1", *MODEL,
                    "--steps", "4", "--every", "2", env={"PHALANX_FAULT_KILL_DURING_FLUSH": "4"})
    assert result.returncode != 0
    ls = run([phalanx, "ckpt", "ls", ckpt]).stdout
    tier1 = [line.split(": ", 1)[1] for line in ls.splitlines() if line.startswith("tier 1")]
    assert len(tier1) == 1 and tier1[0].startswith("/dev/shm/phalanx-"), ls
    try:
        _, state = read(driver, 1, "1x1x1", ckpt, "")  # "": the default tier 1
        assert state["step"] == 4 and state["path"].startswith("/dev/shm/phalanx-")
        # a successful run over the same directory cleans it up
        result = launch(driver, 1, "write", "--dir", ckpt, "--layout", "1x1x1", *MODEL,
                        "--steps", "2", "--every", "2")
        assert result.returncode == 0, result.stderr
        assert not os.path.exists(tier1[0])
    finally:
        shutil.rmtree(tier1[0], ignore_errors=True)


def test_resume_with_another_model_shape_names_the_dimension(driver, written):
    result, _ = read(driver, 1, "1x1x1", written[0], "none", "--dim", "64")
    assert result.returncode == 10 + 5
    assert "checkpoint has --dim 32, this run has --dim 64" in result.stderr


def test_resume_from_missing_or_partial_checkpoint(phalanx, driver, written, tmp_path):
    missing = tmp_path / "nothing/step_00000009"
    result, _ = read(driver, 1, "1x1x1", written[0], "none", "--resume", missing)
    assert result.returncode == 10 + 4 and "no such file or directory" in result.stderr
    partial = tmp_path / "partial"
    shutil.copytree(written[0] / "step_00000006", partial)
    (partial / "index.h5").unlink()
    result, _ = read(driver, 1, "1x1x1", written[0], "none", "--resume", partial)
    assert result.returncode == 10 + 3 and "never committed" in result.stderr
    result, _ = read(driver, 1, "1x1x1", tmp_path / "empty")
    assert result.returncode == 10 + 4 and "no complete checkpoint" in result.stderr
    assert run([phalanx, "ckpt", "verify", partial]).returncode == 3
    assert run([phalanx, "ckpt", "verify", missing]).returncode == 4
    assert run([phalanx, "ckpt", "ls", missing]).returncode == 4
    assert run([phalanx, "ckpt", "inspect", partial]).returncode == 3


def mount_tmpfs(directory, options):
    directory.mkdir()
    mount = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(directory)],
                           capture_output=True, text=True)
    if mount.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({mount.stderr.strip()}): needs root")


def test_unwritable_ckpt_dir(driver, tmp_path):
    (tmp_path / "plain").write_text("a file, not a directory")
    result = write(driver, 2, "2x1x1", tmp_path / "plain/ckpt", "none")
    assert result.returncode != 0
    assert "--ckpt-dir" in result.stderr and "cannot create directory" in result.stderr
    readonly = tmp_path / "ro"
    mount_tmpfs(readonly, "ro,size=1m")
    try:
        result = write(driver, 1, "1x1x1", readonly, "none")
        assert result.returncode != 0 and "Read-only file system" in result.stderr
    finally:
        subprocess.run(["umount", str(readonly)])


def test_no_space_left_during_a_flush(phalanx, driver, tmp_path):
    probe = tmp_path / "probe"
    assert write(driver, 1, "1x1x1", probe, "none", "--steps", "2").returncode == 0
    size = sum(p.stat().st_size for p in (probe / "step_00000002").iterdir())
    full = tmp_path / "full"
    mount_tmpfs(full, f"size={(5 * size // 2) // 4096 * 4096}")  # room for two
    try:
        result = write(driver, 1, "1x1x1", full, tmp_path / "shm", "--steps", "8",
                       "--every", "2", "--keep", "5")
        assert result.returncode == 0, result.stderr  # training went on
        assert "No space left on device" in result.stderr
        assert "step 6 is not committed to tier 2" in result.stderr
        assert steps_in(full) == ["step_00000002", "step_00000004"]  # no partial leftovers
        assert run([phalanx, "ckpt", "verify", full]).returncode == 0
        # tier 1 still has the newest: it stays until tier 2 catches up
        assert steps_in(tmp_path / "shm")[-1] == "step_00000008"
    finally:
        subprocess.run(["umount", str(full)])
