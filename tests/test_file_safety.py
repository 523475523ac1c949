"""Issue 14, files: the runtime never follows a link it did not make, and its
output files refuse what is not a regular file of their own.

Checkpoints: a link planted at a shard's name is replaced, not written
through (the victim here is a file in tmp_path, never a system file); a step
directory that is a link is not pruned, in --ckpt-dir or in tier 1; a tier-1
directory that someone else made (another owner, writable by others, a
link) is refused with the fix. Outputs: --metrics and --dump-params refuse
links, FIFOs, directories, devices and paths inside a checkpoint directory,
report write errors with a non-zero exit, and a fresh run does not truncate
an existing metrics file."""
import json
import os
import resource
import shutil
import signal
import subprocess

import pytest

from conftest import run

TINY = ["--layers", "2", "--heads", "2", "--dim", "32", "--seq-len", "32", "--seed", "3",
        "--micro-batch", "4", "--global-batch", "8", "--threads", "1", "--quiet"]
NOBODY = 65534
CORPUS = (20000, 4)  # characters, seed: conftest.py's corpus


def train(phalanx, corpus, *extra, **kwargs):
    kwargs.setdefault("timeout", 120)  # only catches a hang
    return run([phalanx, "train", "--data", corpus / "train.bin", *TINY, *extra], **kwargs)


def victim_file(tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    return victim


def victim_dir(tmp_path):
    victim = tmp_path / "victim"
    victim.mkdir()
    for name in ["index.h5", "rank_00000.h5", "precious.txt"]:
        (victim / name).write_text(name)
    return victim


def assert_victim_dir_intact(victim):
    assert sorted(p.name for p in victim.iterdir()) == \
        ["index.h5", "precious.txt", "rank_00000.h5"]
    assert all((victim / p).read_text() == p for p in ["index.h5", "rank_00000.h5"])


def fnv1a(text):
    h = 0xcbf29ce484222325
    for c in text.encode():
        h = ((h ^ c) * 0x100000001b3) & 0xFFFFFFFFFFFFFFFF
    return h


def default_tier1(ckpt):
    """The tier-1 directory a run over --ckpt-dir `ckpt` uses by default."""
    return f"/dev/shm/phalanx-{fnv1a(os.path.realpath(ckpt)):016x}"


# ---- checkpoints ----------------------------------------------------------

def test_resume_does_not_write_through_a_linked_shard(phalanx, corpus, tmp_path):
    ckpt, memory = tmp_path / "ckpt", tmp_path / "shm"
    args = ["--ckpt-dir", ckpt, "--ckpt-memory-dir", memory, "--ckpt-every", 2]
    first = train(phalanx, corpus, "--steps", 2, *args)
    assert first.returncode == 0, first.stderr
    victim = victim_file(tmp_path)
    for tier in [ckpt, memory]:
        (tier / "step_00000004").mkdir(parents=True)
        (tier / "step_00000004" / "rank_00000.h5").symlink_to(victim)
    resumed = train(phalanx, corpus, "--steps", 4, "--resume", "latest", *args)
    assert resumed.returncode == 0, resumed.stderr
    assert victim.read_text() == "precious\n"
    shard = ckpt / "step_00000004" / "rank_00000.h5"
    assert not shard.is_symlink() and shard.is_file()
    assert run([phalanx, "ckpt", "verify", ckpt / "step_00000004"]).returncode == 0


def test_pruning_never_follows_a_linked_step_directory(phalanx, corpus, tmp_path):
    ckpt, memory = tmp_path / "ckpt", tmp_path / "shm"
    victim = victim_dir(tmp_path)
    for tier in [ckpt, memory]:
        tier.mkdir(mode=0o700)
        (tier / "step_00000001").symlink_to(victim, target_is_directory=True)
    result = train(phalanx, corpus, "--steps", 6, "--ckpt-dir", ckpt, "--ckpt-memory-dir",
                   memory, "--ckpt-every", 2, "--ckpt-keep", 1)
    assert result.returncode == 0, result.stderr
    assert_victim_dir_intact(victim)
    assert (ckpt / "step_00000001").is_symlink()  # left alone, not followed
    assert (ckpt / "step_00000006" / "index.h5").is_file()
    assert not (ckpt / "step_00000004").exists()  # real steps are still pruned


@pytest.mark.parametrize("case", ["other owner", "mode 0777", "symlink"])
def test_a_tier1_directory_someone_else_made_is_refused(phalanx, corpus, tmp_path, case):
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    tier1 = default_tier1(ckpt)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir(mode=0o700)
    try:
        if case == "symlink":
            os.symlink(elsewhere, tier1)
            why = "is a symbolic link"
        else:
            os.mkdir(tier1, 0o700)
            if case == "mode 0777":
                os.chmod(tier1, 0o777)
                why = "is writable by others (mode 0777)"
            else:
                if os.geteuid() != 0:
                    pytest.skip("only root can give a directory to another user")
                os.chown(tier1, NOBODY, NOBODY)
                why = f"belongs to uid {NOBODY}"
        result = train(phalanx, corpus, "--steps", 2, "--ckpt-dir", ckpt, "--ckpt-every", 2)
        assert result.returncode == 1, result.stderr
        assert tier1 in result.stderr and why in result.stderr, result.stderr
        assert "remove it, or pass --ckpt-memory-dir" in result.stderr
        assert list(elsewhere.iterdir()) == []  # nothing written where the link points
        assert not any(ckpt.iterdir())  # and no checkpoint written at all
    finally:
        if os.path.islink(tier1):
            os.unlink(tier1)
        else:
            shutil.rmtree(tier1, ignore_errors=True)


def test_tier1_made_by_the_run_is_private(phalanx, corpus, tmp_path):
    ckpt, memory = tmp_path / "ckpt", tmp_path / "shm"
    env = dict(os.environ, PHALANX_FAULT_KILL_DURING_FLUSH="4:2")  # tier 1 is kept
    result = train(phalanx, corpus, "--steps", 4, "--ckpt-dir", ckpt, "--ckpt-memory-dir",
                   memory, "--ckpt-every", 2, env=env)
    assert result.returncode != 0
    assert memory.stat().st_mode & 0o777 == 0o700


# ---- outputs ----------------------------------------------------------------

@pytest.fixture
def fifo(tmp_path):
    path = tmp_path / "fifo"
    os.mkfifo(path)
    return path


def refused_output(phalanx, corpus, flag, path, *extra):
    result = train(phalanx, corpus, "--steps", 1, flag, path, *extra, timeout=60)
    assert result.returncode == 1, result.stderr
    assert f"{flag} '{path}'" in result.stderr, result.stderr
    return result.stderr


@pytest.mark.parametrize("flag", ["--metrics", "--dump-params"])
def test_outputs_refuse_what_is_not_a_regular_file(phalanx, corpus, tmp_path, fifo, flag):
    assert "is a FIFO" in refused_output(phalanx, corpus, flag, fifo)  # no hang in open()
    assert "is a directory" in refused_output(phalanx, corpus, flag, tmp_path)
    assert "is a device" in refused_output(phalanx, corpus, flag, "/dev/full")
    victim = victim_file(tmp_path)
    link = tmp_path / "link"
    link.symlink_to(victim)
    # a link is refused even with permission to replace what is there
    assert "is a symbolic link" in refused_output(phalanx, corpus, flag, link,
                                                  "--metrics-overwrite")
    assert victim.read_text() == "precious\n"


@pytest.mark.parametrize("flag", ["--metrics", "--dump-params"])
def test_outputs_refuse_a_checkpoint_directory(phalanx, corpus, tmp_path, flag):
    ckpt, memory = tmp_path / "ckpt", tmp_path / "shm"
    args = ["--ckpt-dir", ckpt, "--ckpt-memory-dir", memory]
    for place in [ckpt / "out", memory / "out", ckpt / "step_00000001" / "rank_00000.h5"]:
        place.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        err = refused_output(phalanx, corpus, flag, place, *args)
        assert "is inside the checkpoint directory" in err and "write it elsewhere" in err
        assert not place.exists()


def test_a_fresh_run_keeps_an_existing_metrics_file(phalanx, corpus, tmp_path):
    metrics = tmp_path / "metrics.jsonl"
    metrics.write_text('{"step": 1, "loss": 5.0}\n')  # an earlier run's
    err = refused_output(phalanx, corpus, "--metrics", metrics)
    assert "exists" in err and "--metrics-overwrite" in err
    assert metrics.read_text() == '{"step": 1, "loss": 5.0}\n'
    appended = train(phalanx, corpus, "--steps", 1, "--metrics", metrics, "--metrics-append")
    assert appended.returncode == 0, appended.stderr
    assert [json.loads(line)["step"] for line in metrics.read_text().splitlines()] == [1, 1]
    replaced = train(phalanx, corpus, "--steps", 2, "--metrics", metrics, "--metrics-overwrite")
    assert replaced.returncode == 0, replaced.stderr
    assert [json.loads(line)["step"] for line in metrics.read_text().splitlines()] == [1, 2]


def test_a_resumed_run_appends_to_its_metrics(phalanx, corpus, tmp_path):
    metrics, ckpt = tmp_path / "metrics.jsonl", tmp_path / "ckpt"
    args = ["--metrics", metrics, "--ckpt-dir", ckpt, "--ckpt-memory-dir", "none",
            "--ckpt-every", 2]
    assert train(phalanx, corpus, "--steps", 2, *args).returncode == 0
    resumed = train(phalanx, corpus, "--steps", 4, "--resume", "latest", *args)
    assert resumed.returncode == 0, resumed.stderr
    assert [json.loads(line)["step"] for line in metrics.read_text().splitlines()] == [1, 2, 3, 4]


def file_size_limit(limit):
    """For preexec_fn: writes past `limit` bytes fail with EFBIG (not SIGXFSZ)."""
    def apply():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return apply


def test_a_metrics_write_error_fails_the_run(phalanx, corpus, tmp_path):
    metrics = tmp_path / "metrics.jsonl"
    result = train(phalanx, corpus, "--steps", 20, "--metrics", metrics,
                   preexec_fn=file_size_limit(1500))
    assert result.returncode == 1, result.stderr
    assert f"--metrics: cannot write '{metrics}': File too large" in result.stderr
    assert "no further rows are written" in result.stderr


def test_a_dump_params_write_error_fails_the_run(phalanx, corpus, tmp_path):
    params = tmp_path / "params.bin"
    result = train(phalanx, corpus, "--steps", 1, "--dump-params", params,
                   preexec_fn=file_size_limit(4096))
    assert result.returncode == 1, result.stderr
    assert f"--dump-params: cannot write '{params}': File too large" in result.stderr
