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
import zlib

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


SEAL_MAGIC = b"PHXSEAL1"


def reseal(index):
    """Recomputes index.h5's seal (checkpoint/format.c: magic, crc32 at 8 of
    every byte from 12 on, the size at 12) after an edit, so that what the
    edit breaks is found by the checks behind the seal, not by the seal."""
    data = bytearray(open(index, "rb").read())
    assert data[:8] == SEAL_MAGIC, "index.h5 has no seal"
    data[12:20] = len(data).to_bytes(8, "little")
    data[8:12] = zlib.crc32(data[12:]).to_bytes(4, "little")
    open(index, "wb").write(data)


def set_table(index, table, row, field, value):
    with h5py.File(index, "r+") as f:
        records = f[table][...]
        records[row][field] = value
        f[table][...] = records
    reseal(index)


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
    reseal(index)


def duplicate_table(index, table):
    with h5py.File(index, "r+") as f:
        records = f[table][...]
        f[table].resize((2 * len(records),))
        f[table][...] = np.concatenate([records, records])
    reseal(index)


@pytest.mark.parametrize("spoil", [empty_table, duplicate_table])
def test_an_empty_or_duplicated_fragment_table_falls_back(phalanx, build_dir, ckpt, spoil):
    spoil(ckpt / NEWEST / "index.h5", "fragments")
    result = verify(phalanx, ckpt / NEWEST)
    assert result.returncode == 1, result.stdout
    assert_falls_back(build_dir, ckpt, "corrupt")


def test_the_seal_covers_every_byte_of_the_index(phalanx, build_dir, ckpt):
    """The index is checked over its raw bytes before HDF5 parses them: an
    edit that HDF5 itself accepts (h5py wrote a table record in place) is
    refused by the seal, and so is a file whose size is not the sealed one."""
    index = ckpt / NEWEST / "index.h5"
    data = open(index, "rb").read()
    assert data[:8] == SEAL_MAGIC
    assert int.from_bytes(data[12:20], "little") == len(data)
    assert zlib.crc32(data[12:]) == int.from_bytes(data[8:12], "little")
    with h5py.File(index, "r+") as f:
        assert f.userblock_size == 512
        records = f["shards"][...]
        records[0]["bytes"] += 1
        f["shards"][...] = records
    assert os.path.getsize(index) == len(data)
    result = verify(phalanx, ckpt / NEWEST)
    assert result.returncode == 1, result.stdout
    assert "corrupt: the index checksum (crc32)" in result.stdout
    assert_falls_back(build_dir, ckpt, "index checksum")
    set_table(index, "shards", 0, "bytes", records[0]["bytes"] - 1)  # as it was, resealed
    assert verify(phalanx, ckpt / NEWEST).returncode == 0
    with open(index, "ab") as f:
        f.write(b"\0" * 8)
    result = verify(phalanx, ckpt / NEWEST)
    assert result.returncode == 1 and "truncated or extended" in result.stdout, result.stdout


def test_a_sealed_index_is_still_a_model_file(phalanx, written, tmp_path):
    """Commands that take a model file tell an index by its first bytes: the
    seal, no longer the HDF5 signature."""
    result = run([phalanx, "export", written / NEWEST / "index.h5", "--format", "llmc",
                  "-o", tmp_path / "model.bin"], timeout=60)
    assert result.returncode == 0, result.stderr


def damage_global_heap(path):
    """Makes the first object of the file's global heap collection (GCOL)
    claim 1 MiB: HDF5 1.10.8 trusts that size when it reads a variable-length
    string (a segfault or an endless loop, fuzz findings 1, 1b, 1c)."""
    data = bytearray(open(path, "rb").read())
    heap = data.index(b"GCOL")
    # GCOL, version, 3 reserved, collection size (8); object: index (2),
    # references (2), reserved (4), size (8)
    size_at = heap + 16 + 8
    assert int.from_bytes(data[size_at:size_at + 8], "little") < 4096
    data[size_at:size_at + 8] = (1 << 20).to_bytes(8, "little")
    open(path, "wb").write(data)


def as_variable_length(path, obj, name):
    """Rewrites string attribute `name` of `obj` as a variable-length string
    (h5py's default for str), the same text."""
    with h5py.File(path, "r+") as f:
        value = f[obj].attrs[name]
        assert isinstance(value, bytes), "Phalanx writes fixed-length strings"
        f[obj].attrs[name] = value.decode()
        assert h5py.check_string_dtype(f[obj].attrs.get_id(name).dtype).length is None


@pytest.mark.parametrize("damaged", [False, True], ids=["intact-heap", "damaged-heap"])
@pytest.mark.parametrize("file,obj,name", [
    ("index.h5", "run", "optimizer"),
    ("rank_00000.h5", "params/wte", "logical_name"),
])
def test_a_variable_length_string_is_corrupt_unread(phalanx, build_dir, ckpt, file, obj, name,
                                                    damaged):
    """Variable-length strings live in HDF5's global heap, which has no
    checksum: a damaged one crashed (1, 1b) or hung (1c) verify and resume.
    One is refused by its type before HDF5 reads it, intact or not."""
    path, index = ckpt / NEWEST / file, ckpt / NEWEST / "index.h5"
    as_variable_length(path, obj, name)
    if damaged:
        damage_global_heap(path)
    if file == "index.h5":
        reseal(index)
    else:  # the shard grew by its new global heap: the index must agree
        set_table(index, "shards", 0, "bytes", os.path.getsize(path))
    result = verify(phalanx, ckpt / NEWEST)
    assert result.returncode == 1, result.stdout + result.stderr
    if file == "index.h5":
        assert f"attribute '{name}' is a variable-length string" in result.stdout
        reason = "variable-length string"
    else:
        assert f"/params/wte: its attributes {name}" in result.stdout, result.stdout
        reason = "/params/wte"
    assert_falls_back(build_dir, ckpt, reason)


def test_a_table_of_another_record_type_is_corrupt(phalanx, build_dir, ckpt):
    """The fragment table with variable-length names (again the global
    heap) is refused by its type before HDF5 reads a record."""
    index = ckpt / NEWEST / "index.h5"
    with h5py.File(index, "r+") as f:
        records = f["fragments"][...]
        fields = [(n, h5py.string_dtype() if n == "name" else records.dtype[n])
                  for n in records.dtype.names]
        rewritten = np.array([tuple(r[n].decode() if n == "name" else r[n]
                                    for n in records.dtype.names) for r in records],
                             dtype=fields)
        del f["fragments"]
        f.create_dataset("fragments", data=rewritten, chunks=True, maxshape=(None,),
                         fletcher32=True)
    reseal(index)
    result = verify(phalanx, ckpt / NEWEST)
    assert result.returncode == 1, result.stdout
    assert "table 'fragments' has another record type" in result.stdout
    assert_falls_back(build_dir, ckpt, "another record type")


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
