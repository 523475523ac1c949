"""The launcher channel (issue 14): inert to strangers, and ranks that stop
when their launcher is gone.

A stranger finds the launcher's port the way any local user could (here:
PHALANX_CHANNEL in the environment of the launcher's children) and speaks
the protocol without the job's secret. Nothing it says may count: no crash
detected, no restart, no scancel, nothing printed.

A launcher killed with SIGKILL (or stopped, so that it falls silent) must
not leave its mpirun and ranks training: they stop within seconds and commit
no checkpoint after the one that was in flight."""
import json
import os
import re
import signal
import socket
import subprocess
import time

import pytest

from shards import structured_text, text_tokens, write_shard

MODEL = ["--layers", "1", "--heads", "2", "--dim", "32", "--seq-len", "16", "--seed", "5",
         "--micro-batch", "2", "--global-batch", "4", "--threads", "1"]
HANG_GUARD = 120  # seconds; only catches a hang, never times the code


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    d = tmp_path_factory.mktemp("corpus")
    write_shard(d / "train.bin", text_tokens(structured_text(40000, seed=4)))
    return d / "train.bin"


# ----------------------------------------------------------------------------
# processes

def stat_fields(pid):
    """The fields of /proc/PID/stat after the command name (the state first), None when the
    process is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            text = f.read()
    except OSError:
        return None
    return text[text.rindex(")") + 2:].split()


def parent_of(pid):
    fields = stat_fields(pid)
    return None if fields is None else int(fields[1])


def descendants(root):
    """Every process below `root`, found through /proc."""
    parents = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            parent = parent_of(int(entry))
            if parent is not None:
                parents[int(entry)] = parent
    found, frontier = set(), {root}
    while frontier:
        frontier = {pid for pid, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


def alive(pid):
    """Running, not a zombie (an exited child that its parent has not reaped)."""
    fields = stat_fields(pid)
    return fields is not None and fields[0] != "Z"


def environ_of(pid):
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            items = f.read().split(b"\0")
    except OSError:
        return {}
    return dict(i.decode(errors="replace").split("=", 1) for i in items if b"=" in i)


def wait_for(what, predicate, timeout=HANG_GUARD):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    pytest.fail(f"hang guard: {what} not seen within {timeout} s")


def channel_port(launcher):
    """The port in PHALANX_CHANNEL of the launcher's children (mpirun has it)."""
    def find():
        for pid in descendants(launcher.pid):
            address = environ_of(pid).get("PHALANX_CHANNEL")
            if address:
                return int(address.rsplit(":", 1)[1])
        return None
    return wait_for("PHALANX_CHANNEL in a child of the launcher", find)


def kill_tree(launcher, pids):
    """Cleanup, also after a failure: everything the test started."""
    for pid in {launcher.pid, *pids, *descendants(launcher.pid)}:
        try:
            os.kill(pid, signal.SIGCONT)
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
    launcher.wait(timeout=HANG_GUARD)


def stranger(port, lines):
    """Connects, says `lines` without the job's secret, closes. A port already
    closed is no error here: a launcher fooled by an earlier stranger may have
    moved on to another attempt, which the report then shows."""
    try:
        s = socket.create_connection(("127.0.0.1", port), timeout=HANG_GUARD)
    except ConnectionRefusedError:
        return
    with s:
        try:
            s.sendall("".join(line + "\n" for line in lines).encode())
            s.shutdown(socket.SHUT_WR)
            s.recv(4096)  # the challenge; then the launcher closes or waits for us
        except OSError:
            pass  # the launcher refused us already: it closed (or reset) the connection


# ----------------------------------------------------------------------------
# a stranger on the port

def elastic_job(phalanx, corpus, out, extra_env=None, inject=()):
    out.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, **(extra_env or {}))
    events = [a for e in inject for a in ("--inject", e)]
    cmd = [phalanx, "run", "-n", 2, "--elastic", "--heartbeat-timeout", 60, *events,
           "--report", out / "report.json", "--",
           "--data", corpus, *MODEL, "--steps", 40, "--ckpt-dir", out / "ckpt",
           "--ckpt-every", 1, "--ckpt-memory-dir", "none", "--metrics", out / "metrics.jsonl"]
    return subprocess.Popen([str(c) for c in cmd], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)


def finish(launcher):
    stdout, stderr = launcher.communicate(timeout=HANG_GUARD)
    return launcher.returncode, stdout, stderr


def losses(out):
    return [json.loads(line)["loss"] for line in (out / "metrics.jsonl").read_text().splitlines()]


STRANGER_LINES = [
    ["hello 0 2 1 evil -"],
    ["auth " + "0" * 64, "hello 1 2 9 x -"],
    ["hello 1 2 9 x --user=root", "progress 3 \x1b[31mEVIL\x1b]0;title\x07", "log EVIL", "done 0 0"],
    ["fault crash 0 1", "x" * 5000],
]


def test_a_stranger_on_the_port_changes_nothing(phalanx, corpus, tmp_path):
    reference = elastic_job(phalanx, corpus, tmp_path / "reference")
    code, _, stderr = finish(reference)
    assert code == 0, stderr
    launcher = elastic_job(phalanx, corpus, tmp_path / "attacked")
    try:
        port = channel_port(launcher)
        for lines in STRANGER_LINES:
            stranger(port, lines)
        code, stdout, stderr = finish(launcher)
    finally:
        kill_tree(launcher, [])
    assert code == 0, stderr
    report = json.loads((tmp_path / "attacked" / "report.json").read_text())
    assert report["restarts"] == 0 and report["outcome"] == "completed", stderr
    assert "detected" not in stderr
    assert "did not authenticate" in stderr  # the strangers were there, and refused
    assert "EVIL" not in stdout and "\x1b" not in stdout
    assert losses(tmp_path / "attacked") == losses(tmp_path / "reference")


def test_a_strangers_slurm_step_never_reaches_scancel(phalanx, corpus, tmp_path):
    fake = tmp_path / "bin"
    fake.mkdir()
    calls = tmp_path / "scancel-calls"
    (fake / "scancel").write_text(f'#!/bin/sh\necho "$@" >> {calls}\n')
    (fake / "scancel").chmod(0o755)
    env = {"PATH": f"{fake}:{os.environ['PATH']}"}
    # a real crash follows, so a step the launcher had taken would be cancelled
    launcher = elastic_job(phalanx, corpus, tmp_path / "run", env, inject=["crash:1@5"])
    try:
        port = channel_port(launcher)
        stranger(port, ["hello 1 2 9 x --user=root"])
        stranger(port, ["auth " + "f" * 64, "hello 1 2 9 x --user=root"])
        code, _, stderr = finish(launcher)
    finally:
        kill_tree(launcher, [])
    assert code == 0, stderr
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert report["restarts"] == 1  # the injected crash, and only it
    assert report["attempts"][0]["failure"]["rank"] == 1
    recorded = calls.read_text() if calls.exists() else ""
    assert "--user=root" not in recorded


# ----------------------------------------------------------------------------
# ranks without their launcher

def committed_steps(ckpt):
    if not ckpt.exists():
        return []
    return sorted(int(d.name.split("_")[1]) for d in ckpt.iterdir()
                  if d.name.startswith("step_") and (d / "index.h5").exists())


@pytest.mark.parametrize("how", ["kill", "silence"])
def test_ranks_stop_without_their_launcher(phalanx, corpus, tmp_path, how):
    """kill: SIGKILL of `phalanx run` closes the channel. silence: SIGSTOP
    keeps it open but the pings stop (PHALANX_LAUNCHER_TIMEOUT=3); the ranks
    train on until the timeout, so only their exit is checked there."""
    ckpt = tmp_path / "ckpt"
    env = dict(os.environ, PHALANX_LAUNCHER_TIMEOUT="3")
    cmd = [phalanx, "run", "-n", 2, "--", "--data", corpus, *MODEL, "--steps", 10 ** 7,
           "--ckpt-dir", ckpt, "--ckpt-every", 1, "--ckpt-memory-dir", "none", "--quiet"]
    launcher = subprocess.Popen([str(c) for c in cmd], stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, text=True, env=env)
    workers = set()
    try:
        wait_for("two committed checkpoints", lambda: len(committed_steps(ckpt)) >= 2)
        workers = descendants(launcher.pid)  # mpirun and both ranks
        assert len(workers) >= 3, workers
        os.kill(launcher.pid, signal.SIGKILL if how == "kill" else signal.SIGSTOP)
        newest_at_kill = committed_steps(ckpt)[-1]
        wait_for("mpirun and the ranks exiting",
                 lambda: not any(alive(pid) for pid in workers), timeout=60)
    finally:
        kill_tree(launcher, workers)
    stderr = launcher.stderr.read()
    # Each rank says after which step it stopped. Snapshots of steps up to that
    # one may still be committing (the sidecar lags training by a load-dependent
    # number of steps); no step the ranks did not finish can ever be committed.
    stopped = [int(s) for s in re.findall(r"stopping after step (\d+) without another", stderr)]
    assert stopped, stderr
    assert committed_steps(ckpt)[-1] <= max(stopped), (committed_steps(ckpt), stderr)
    assert committed_steps(ckpt)[-1] >= newest_at_kill
    if how == "silence":
        assert "nothing from the launcher for" in stderr


def test_a_bad_launcher_timeout_is_refused(phalanx, corpus, tmp_path):
    env = dict(os.environ, PHALANX_LAUNCHER_TIMEOUT="soon")
    result = subprocess.run([str(c) for c in [phalanx, "run", "-n", 1, "--", "--data", corpus,
                                               *MODEL, "--steps", 1]],
                            capture_output=True, text=True, env=env, timeout=HANG_GUARD)
    assert result.returncode != 0
    assert "PHALANX_LAUNCHER_TIMEOUT='soon' is not a number of seconds" in result.stderr


def test_a_rank_without_the_secret_is_refused(phalanx, corpus):
    env = {k: v for k, v in os.environ.items() if k != "PHALANX_CHANNEL_SECRET"}
    env["PHALANX_CHANNEL"] = "127.0.0.1:9"
    result = subprocess.run([str(c) for c in [phalanx, "train", "--data", corpus, *MODEL,
                                               "--steps", 1]],
                            capture_output=True, text=True, env=env, timeout=HANG_GUARD)
    assert result.returncode != 0
    assert "PHALANX_CHANNEL_SECRET is not" in result.stderr
