"""Issue 14, "verify what resume trusts": every check that `phalanx ckpt verify`
makes, resume makes too (one validation), and resume falls back past what it
refuses to the intact previous checkpoint, also after an explicit --resume.

Checkpoints come from tests/ckpt_driver.c (one rank, a tiny GPT's tensors,
steps 2 and 4); the damage is done with h5py, keeping each file's size so
that the size check alone cannot be what catches it."""
import json
import os
import shutil
import stat

import h5py
import numpy as np
import pytest

from conftest import run

MODEL = ["--layers", "1", "--heads", "2", "--dim", "32", "--vocab", "256", "--seq-len", "32"]
NEWEST = "step_00000004"


@pytest.fixture(scope="module")
def written(build_dir, tmp_path_factory):
    ckpt = tmp_path_factory.mktemp("trust") / "ckpt"
    result = run([build_dir / "tests" / "ckpt_driver", "write", "--dir", ckpt,
                  "--memory-dir", "none", "--layout", "1x1x1", *MODEL, "--steps", "4",
                  "--every", "2", "--keep", "2"], timeout=120)
    assert result.returncode == 0, result.stderr
    return ckpt


@pytest.fixture
def ckpt(written, tmp_path):
    copy = tmp_path / "ckpt"
    shutil.copytree(written, copy)
    return copy


def verify(phalanx, path):
    return run([phalanx, "ckpt", "verify", path], timeout=60)


def resume(build_dir, ckpt, *extra):
    """Resumes with ckpt_driver; returns (result, the step it resumed from)."""
    result = run([build_dir / "tests" / "ckpt_driver", "read", "--dir", ckpt,
                  "--memory-dir", "none", "--layout", "1x1x1", *MODEL, *extra], timeout=120)
    steps = [line for line in result.stdout.splitlines() if line.startswith("{")]
    return result, json.loads(steps[-1])["step"] if steps else None


def assert_falls_back(build_dir, ckpt, reason):
    """Both "latest" and the explicit newest step fall back to step 2."""
    for extra in ([], ["--resume", ckpt / NEWEST]):
        result, step = resume(build_dir, ckpt, *extra)
        assert result.returncode == 0, result.stderr
        assert step == 2, result.stderr
        # "latest" skips what its listing already refuses; a path is tried, then refused
        said = "skipping" in result.stderr or "cannot resume from" in result.stderr
        assert said and reason in result.stderr, result.stderr


def rewrite_shard(shard, name, make):
    """Rebuilds `shard` with dataset `name` made by make(group, leaf, old
    dataset) instead, every other object copied, padded to its old size."""
    size = os.path.getsize(shard)
    rebuilt = shard.with_suffix(".new")
    with h5py.File(shard, "r") as old, h5py.File(rebuilt, "w", libver=("v110", "v110")) as new:
        for key, value in old.attrs.items():
            new.attrs[key] = value

        def copy(path, obj):
            if not isinstance(obj, h5py.Dataset):
                return
            group = new.require_group(os.path.dirname(path))
            leaf = os.path.basename(path)
            if path != name:
                old.copy(obj, group, name=leaf)
                return
            made = make(group, leaf, obj)
            for key, value in obj.attrs.items():
                made.attrs[key] = value
        old.visititems(copy)
    assert os.path.getsize(rebuilt) <= size
    with open(rebuilt, "ab") as out:
        out.truncate(size)
    os.replace(rebuilt, shard)


def tripled_plain(group, leaf, old):
    return group.create_dataset(leaf, data=old[...] * 3)  # contiguous, no Fletcher32


def as_int32(group, leaf, old):
    return group.create_dataset(leaf, data=old[...].astype(np.int32), chunks=old.chunks,
                                fletcher32=True)


def as_float16(group, leaf, old):
    return group.create_dataset(leaf, data=old[...].astype(np.float16), chunks=old.chunks,
                                fletcher32=True)


def virtual_elsewhere(group, leaf, old):
    other = os.path.join(os.path.dirname(group.file.filename), "elsewhere.h5")
    with h5py.File(other, "w") as f:
        f["x"] = old[...]
    layout = h5py.VirtualLayout(shape=old.shape, dtype="f4")
    layout[...] = h5py.VirtualSource(other, "x", shape=old.shape)
    return group.create_virtual_dataset(leaf, layout)


@pytest.mark.parametrize("make,reason", [
    (tripled_plain, "is not stored in chunks"),
    (as_int32, "is not float32"),
    (as_float16, "is not float32"),
    (virtual_elsewhere, "is not stored in chunks"),
])
def test_a_dataset_that_is_not_ours_is_corrupt(phalanx, build_dir, ckpt, make, reason):
    rewrite_shard(ckpt / NEWEST / "rank_00000.h5", "params/wte", make)
    result = verify(phalanx, ckpt / NEWEST)
    assert result.returncode == 1, result.stdout
    assert f"/params/wte: {reason}" in result.stdout
    assert verify(phalanx, ckpt / "step_00000002").returncode == 0
    assert_falls_back(build_dir, ckpt, reason)


def flip_at(path, offset):
    with open(path, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)[0]
        f.seek(offset)
        f.write(bytes([byte ^ 0xFF]))


def offset_of(path, text):
    data = open(path, "rb").read()
    assert data.count(text) >= 1, text
    return data.rindex(text) + 1  # the last: an updated index leaves old heap objects


@pytest.mark.parametrize("where", ["optimizer", "mapping", 800])
def test_a_flipped_index_byte_is_caught(phalanx, build_dir, ckpt, where):
    """The run state's strings and the virtual datasets' mappings live in
    HDF5's global heap, which has no checksum of its own; offset 800 gave
    an empty reason."""
    index = ckpt / NEWEST / "index.h5"
    offset = {"optimizer": lambda: offset_of(index, b"lamb"),
              "mapping": lambda: offset_of(index, b"rank_00000.h5")}.get(where, lambda: where)()
    flip_at(index, offset)
    result = verify(phalanx, ckpt / NEWEST)
    assert result.returncode == 1, result.stdout
    reason = result.stdout.strip().split("corrupt: ", 1)[1]
    assert reason.strip() and not reason.rstrip().endswith(":"), result.stdout
    assert "unknown HDF5 error" not in result.stdout
    assert_falls_back(build_dir, ckpt, "corrupt" if where != 800 else "index.h5")


def set_table(index, table, row, field, value):
    with h5py.File(index, "r+") as f:
        records = f[table][...]
        records[row][field] = value
        f[table][...] = records


@pytest.mark.parametrize("table,field,value", [
    ("shards", "rank", -1),
    ("fragments", "shape", [1 << 40, 1 << 22]),
    ("fragments", "shape", [1 << 62, 1 << 62]),
    ("fragments", "row_end", 1 << 62),
])
def test_an_edited_table_is_corrupt(phalanx, build_dir, ckpt, table, field, value):
    """A shard rank of -1 overflowed the reader's table of open shards and
    "every checksum good"; huge shapes overflowed sizes."""
    set_table(ckpt / NEWEST / "index.h5", table, 0, field, value)
    result = verify(phalanx, ckpt / NEWEST)
    assert result.returncode == 1, result.stdout
    assert "corrupt" in result.stdout and "every checksum good" not in result.stdout
    assert_falls_back(build_dir, ckpt, "corrupt")


def empty_table(index, table):
    with h5py.File(index, "r+") as f:
        f[table].resize((0,))


def duplicate_table(index, table):
    with h5py.File(index, "r+") as f:
        records = f[table][...]
        f[table].resize((2 * len(records),))
        f[table][...] = np.concatenate([records, records])


@pytest.mark.parametrize("spoil", [empty_table, duplicate_table])
def test_an_empty_or_duplicated_fragment_table_falls_back(phalanx, build_dir, ckpt, spoil):
    spoil(ckpt / NEWEST / "index.h5", "fragments")
    result = verify(phalanx, ckpt / NEWEST)
    assert result.returncode == 1, result.stdout
    assert_falls_back(build_dir, ckpt, "corrupt")


def make_index(step, kind, tmp_path):
    index = step / "index.h5"
    index.unlink()
    if kind == "empty":
        index.write_bytes(b"")
    elif kind == "garbage":
        index.write_bytes(bytes(range(256)) * 4)
    elif kind == "text":
        index.write_text("this is not a checkpoint index\n")
    elif kind == "directory":
        index.mkdir()
    elif kind == "fifo":
        os.mkfifo(index)


@pytest.mark.parametrize("kind,reason", [
    ("empty", "is empty (0 bytes), not an HDF5 file"),
    ("garbage", "is not an HDF5 file"),
    ("text", "is not an HDF5 file"),
    ("directory", "is a directory, not an HDF5 file"),
    ("fifo", "is not a regular file"),
])
def test_an_index_that_is_no_hdf5_file_is_named(phalanx, build_dir, ckpt, tmp_path, kind,
                                                reason):
    """Said "unknown HDF5 error" before; a FIFO blocked verify and inspect."""
    make_index(ckpt / NEWEST, kind, tmp_path)
    for command in ("verify", "inspect"):
        result = run([phalanx, "ckpt", command, ckpt / NEWEST], timeout=60)
        assert result.returncode == 1, result.stdout + result.stderr
        assert reason in result.stdout + result.stderr
        assert "unknown HDF5 error" not in result.stdout + result.stderr
    assert_falls_back(build_dir, ckpt, reason)


def test_a_fifo_shard_does_not_block(phalanx, ckpt):
    shard = ckpt / NEWEST / "rank_00000.h5"
    shard.unlink()
    os.mkfifo(shard)
    assert stat.S_ISFIFO(os.stat(shard).st_mode)
    result = verify(phalanx, ckpt / NEWEST)
    assert result.returncode != 0 and "rank_00000.h5" in result.stdout


def test_a_long_path_keeps_its_reason(phalanx, tmp_path):
    """A 5000-character path cut the reason off."""
    path = tmp_path / (("d" * 200 + "/") * 24) / "step_00000004"
    result = run([phalanx, "ckpt", "verify", path], timeout=60)
    assert result.returncode == 4
    assert result.stdout.rstrip().endswith("bytes with /index.h5)"), result.stdout


def test_ckpt_help_lists_every_exit_status(phalanx):
    result = run([phalanx, "ckpt", "--help"])
    assert result.returncode == 0
    for code in range(7):
        assert f"  {code}  " in result.stdout, code
