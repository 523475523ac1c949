"""Inputs that used to hang or crash a command: a FIFO as data, numbers out of
range, a stop inside a step or an evaluation that never ends; and help texts
that list every flag the parsers accept and every exit status.

Each bad input must give a clear message naming the problem, a non-zero exit
and no damage. The timeouts below only catch a hang (the old behaviour)."""
import os
import re
import signal
import stat
import subprocess

import numpy as np
import pytest

from conftest import ROOT, processes_naming, run
from runs import assert_same_run, launch
from shards import structured_text, text_tokens, write_shard

TINY = ["--layers", "1", "--heads", "1", "--dim", "8", "--seq-len", "8", "--micro-batch", "1",
        "--threads", "1"]
HANG_GUARD = 120  # seconds: far beyond a working run, only catches a hang


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    d = tmp_path_factory.mktemp("inputs")
    write_shard(d / "train.bin", text_tokens(structured_text(8000, seed=1)))
    write_shard(d / "val.bin", text_tokens(structured_text(3000, seed=3)))
    return d


@pytest.fixture
def untouched(tmp_path):
    """A file that a refused command must leave as it was (given as its --metrics)."""
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1}\n')
    yield path
    assert path.read_text() == '{"step": 1}\n'


# ---------------------------------------------------------------------------
# a FIFO as data

@pytest.mark.parametrize("flag", ["--data", "--val-data"])
def test_fifo_as_data_is_refused_without_blocking(phalanx, corpus, tmp_path, flag, untouched):
    fifo = tmp_path / "shards.fifo"
    os.mkfifo(fifo)
    data = {"--data": fifo, "--val-data": corpus / "train.bin"}
    if flag == "--val-data":
        data = {"--data": corpus / "train.bin", "--val-data": fifo}
    args = [a for k, v in data.items() for a in (k, v)]
    result = run([phalanx, "train", *args, *TINY, "--steps", "1", "--metrics", untouched],
                 timeout=HANG_GUARD)
    assert result.returncode == 1, result.stderr
    assert f"{flag}: {fifo}: not a regular file (a FIFO)" in result.stderr, result.stderr
    assert stat.S_ISFIFO(os.stat(fifo).st_mode)


# ---------------------------------------------------------------------------
# numbers: every flag bounded, parsed strictly, named in the message

TRAIN_BAD = [
    (["--threads", "100000"], "--threads is 100000: it must be between 1 and 1024"),
    (["--steps", str(2**61)], f"--steps is {2**61}: it must be between 1 and 4294967296"),
    (["--steps", "99999999999999999999"], "--steps is 99999999999999999999: it must be between"),
    (["--steps", "5x"], "--steps: '5x' is not an integer"),
    (["--steps", " 5"], "--steps: ' 5' is not an integer"),
    (["--steps", "0x10"], "--steps: '0x10' is not an integer"),
    (["--steps", "-3"], "--steps is -3: it must be between 1 and"),
    (["--seq-len", str(2**31)], f"--seq-len is {2**31}: it must be between 1 and 1048576"),
    (["--micro-batch", str(2**40)], "--micro-batch is 1099511627776: it must be between 1 and"),
    (["--global-batch", str(2**31)], "--global-batch is 2147483648: it must be between 1 and"),
    (["--eval-batches", str(2**31)], "--eval-batches is 2147483648: it must be between 1 and"),
    (["--dp", "100000"], "--dp is 100000: it must be between 1 and 65536"),
    (["--pp", "65"], "--pp is 65: it must be between 1 and 64"),
    (["--layout", "99999999999x1x1"], "--layout is 99999999999x1x1: dp must be between 1 and"),
    (["--vocab", "70000"], "--vocab is 70000: it must be between 2 and 65536"),
    (["--pp-split", "1,5000"], "--pp-split is 5000: it must be between 0 and"),
    (["--ckpt-every", str(2**62)], "--ckpt-every is 4611686018427387904: it must be between"),
    (["--lr", "1e400"], "--lr: '1e400' is not a finite number"),
]


@pytest.mark.parametrize("args,expected", TRAIN_BAD, ids=[" ".join(a) for a, _ in TRAIN_BAD])
def test_train_number_out_of_range(phalanx, corpus, args, expected, untouched):
    result = run([phalanx, "train", "--data", corpus / "train.bin", *TINY, "--steps", "1",
                  "--metrics", untouched, *args], timeout=HANG_GUARD)
    assert result.returncode == 2, (result.returncode, result.stderr)
    assert f"phalanx train: {expected}" in result.stderr, result.stderr


RUN_BAD = [
    (["-n", "2147483648"], "-n/--ranks is 2147483648: it must be between 1 and 1024"),
    (["-n", "2.5"], "-n/--ranks: '2.5' is not an integer"),
    (["-n", "2", "--max-restarts", "100"], "--max-restarts is 100: it must be between 0 and 63"),
    (["-n", "2", "--min-ranks", "1e3"], "--min-ranks: '1e3' is not an integer"),
    (["-n", "2", "--heartbeat-timeout", "1e9"],
     "--heartbeat-timeout is 1e9: it must be between 0.1 and 86400"),
    (["-n", "2", "--startup-timeout", "inf"], "--startup-timeout: 'inf' is not a finite number"),
]


@pytest.mark.parametrize("command", ["run", "drill"])
@pytest.mark.parametrize("args,expected", RUN_BAD, ids=[" ".join(a) for a, _ in RUN_BAD])
def test_launcher_number_out_of_range(phalanx, corpus, tmp_path, command, args, expected,
                                      untouched):
    result = run([phalanx, command, *args, "--report", tmp_path / "report.json", "--",
                  "--data", corpus / "train.bin", *TINY, "--metrics", untouched],
                 timeout=HANG_GUARD)
    assert result.returncode == 2, (result.returncode, result.stderr)
    assert f"phalanx run: {expected}" in result.stderr, result.stderr
    assert not (tmp_path / "report.json").exists()


@pytest.mark.parametrize("args,expected", [
    (["--shard-tokens", "99999999999999999999"],
     "--shard-tokens is 99999999999999999999: it must be between 1 and 2147483647"),
    (["--shard-tokens", "+5"], "--shard-tokens: '+5' is not an integer"),
    (["--val-fraction", "1e999"], "--val-fraction: '1e999' is not a finite number"),
])
def test_data_prepare_number_out_of_range(phalanx, tmp_path, args, expected):
    text, out = tmp_path / "text.txt", tmp_path / "out"
    text.write_text("one\n\ntwo\n\nthree\n")
    out.mkdir()
    (out / "train_000.bin").write_bytes(b"kept")
    result = run([phalanx, "data", "prepare", "--out", out, *args, text], timeout=HANG_GUARD)
    assert result.returncode == 2, (result.returncode, result.stderr)
    assert f"phalanx data prepare: {expected}" in result.stderr, result.stderr
    assert [p.name for p in out.iterdir()] == ["train_000.bin"]
    assert (out / "train_000.bin").read_bytes() == b"kept"


# ---------------------------------------------------------------------------
# a stop inside a step or an evaluation that would never end

def start_and_stop(cmd, sig, started, marker):
    """Starts cmd, waits for a stdout line containing `started` (the run is
    under way, its signal handlers set), sends `sig`; returns (returncode,
    stdout, stderr). Whatever still runs with `marker` on its command line
    afterwards is killed, and then the test fails."""
    proc = subprocess.Popen([str(c) for c in cmd], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        lines = []
        for line in proc.stdout:
            lines.append(line)
            if started in line:
                break
        assert any(started in line for line in lines), (lines, proc.stderr.read())
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=HANG_GUARD)
        return proc.returncode, "".join(lines) + out, err
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        leftovers = processes_naming(str(marker))
        for pid in leftovers:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        assert leftovers == [], f"processes left running: {leftovers}"


def step_dirs(ckpt):
    return sorted(p.name for p in ckpt.glob("step_*") if (p / "index.h5").exists())


def test_sigterm_inside_a_never_ending_evaluation(phalanx, corpus, tmp_path):
    """The evaluation after step 1 would take 2^31 batches. A stop there ends
    the run at step 1, with step 1's checkpoint, as a stop in its training
    would (--ckpt-every 100 would not have written one)."""
    ckpt, metrics = tmp_path / "ckpt", tmp_path / "metrics.jsonl"
    code, out, err = start_and_stop(
        [phalanx, "train", "--data", corpus / "train.bin", "--val-data", corpus / "val.bin",
         *TINY, "--steps", "3", "--eval-every", "1", "--eval-batches", "2147483647",
         "--ckpt-dir", ckpt, "--ckpt-memory-dir", "none", "--metrics", metrics],
        signal.SIGTERM, "parameters", metrics)
    assert code == 143, err
    assert "stopped: 1 steps" in out, out
    assert step_dirs(ckpt) == ["step_00000001"]
    rows = metrics.read_text().splitlines()
    assert len(rows) == 1 and '"val_loss"' not in rows[0]


def test_sigint_inside_a_never_ending_step(phalanx, corpus, tmp_path):
    """Step 1 would take 2^30 micro-batches: the stop comes between two of
    them; nothing of the step is applied, nothing is checkpointed."""
    ckpt, metrics = tmp_path / "ckpt", tmp_path / "metrics.jsonl"
    code, out, err = start_and_stop(
        [phalanx, "train", "--data", corpus / "train.bin", *TINY, "--steps", "2",
         "--global-batch", str(2**30), "--ckpt-dir", ckpt, "--ckpt-memory-dir", "none",
         "--metrics", metrics],
        signal.SIGINT, "parameters", metrics)
    assert code == 130, err
    assert "stopped: 0 steps" in out, out
    assert step_dirs(ckpt) == []
    assert metrics.read_text() == ""


def test_stop_inside_a_never_ending_pipeline_step_under_run(phalanx, corpus, tmp_path):
    """Two pipeline stages in a step of 2^30 micro-batches: both ranks agree on
    the stop between the same two groups, so neither waits for the other."""
    metrics = tmp_path / "metrics.jsonl"
    code, out, err = start_and_stop(
        [phalanx, "run", "-n", "2", "--", "--data", corpus / "train.bin", *TINY,
         "--layers", "2", "--pp", "2", "--steps", "2", "--global-batch", str(2**30),
         "--metrics", metrics],
        signal.SIGINT, "parameters", metrics)
    assert code == 130, err
    assert "every rank exited cleanly" in err, err


# ---------------------------------------------------------------------------
# help: every flag of the parser, every exit status

def long_options(source):
    """The long option names in a C getopt_long table of `source`."""
    text = (ROOT / source).read_text()
    return set(re.findall(r'\{"([a-z0-9-]+)",\s*(?:required|no|optional)_argument', text))


HELP = {
    ("train",): ("runtime/options.c", {0, 1, 2, 130, 143}),
    ("run",): ("launcher/run.c", {0, 1, 2, 3, 4, 5, 130, 143}),
    ("drill",): ("launcher/run.c", {0, 1, 2, 3, 4, 5, 130, 143}),
    ("data", "prepare"): ("runtime/dataprep.c", {0, 1, 2}),
}


@pytest.mark.parametrize("command", list(HELP), ids=" ".join)
def test_help_lists_every_flag_and_exit_status(phalanx, command):
    source, statuses = HELP[command]
    result = run([phalanx, *command, "--help"])
    assert result.returncode == 0, result.stderr
    flags = long_options(source)
    assert "help" in flags and len(flags) > 3, flags  # the table was found
    missing = sorted(f for f in flags if not re.search(rf"--{f}(?![a-z0-9-])", result.stdout))
    assert missing == [], f"{' '.join(command)} --help lacks {missing}"
    exit_text = result.stdout[result.stdout.index("Exit status"):]
    listed = {int(n) for n in re.findall(r"\b(\d+)\b", exit_text)}
    assert statuses <= listed, (statuses - listed, exit_text)


# ---------------------------------------------------------------------------
# the groups that make a stop possible change nothing else

def test_steps_and_evaluations_longer_than_a_group_train_the_same(phalanx, corpus, tmp_path):
    """80 micro-batches of 1 per step and 100 validation batches of 1 run in
    groups of 64 (with a stop check between them); 20 micro-batches of 4 and
    25 validation batches of 4 cover the same samples in one group. Same
    losses and validation losses (float32 summation noise), also on two
    pipeline stages, whose groups each fill and drain the pipeline."""
    common = ["--data", corpus / "train.bin", "--val-data", corpus / "val.bin",
              "--layers", "2", "--heads", "1", "--dim", "8", "--seq-len", "8", "--threads", "1",
              "--steps", "3", "--global-batch", "80", "--eval-every", "1", "--quiet"]
    grouped = launch(phalanx, tmp_path / "grouped", 1,
                     [*common, "--micro-batch", "1", "--eval-batches", "100"])
    whole = launch(phalanx, tmp_path / "whole", 1,
                   [*common, "--micro-batch", "4", "--eval-batches", "25"])
    piped = launch(phalanx, tmp_path / "piped", 2,
                   [*common, "--micro-batch", "1", "--eval-batches", "100", "--pp", "2"])
    for run_rows in (whole, piped):
        assert_same_run(grouped, run_rows, rtol=1e-5)
        np.testing.assert_allclose([r["val_loss"] for r in run_rows[0]],
                                   [r["val_loss"] for r in grouped[0]], rtol=1e-5, atol=0)
    assert [r["live_activations"] for r in piped[0]] == [[2, 1]] * 3
