"""Shared fixtures for the integration tests.

They run under Debian's /usr/bin/python3 (which has python3-torch, numpy,
h5py); scripts/test takes care of that. PHALANX_BUILD names the meson build
directory (default: build/ at the repository root)."""
import os
import pathlib
import shutil
import subprocess

import pytest

from shards import structured_text, text_tokens, write_shard

ROOT = pathlib.Path(__file__).resolve().parent.parent
BUILD = pathlib.Path(os.environ.get("PHALANX_BUILD", ROOT / "build")).resolve()


def cpu_has_avx512_bf16():
    """What the kernel says of this CPU (/proc/cpuinfo's avx512_bf16 flag): the oracle for
    whether `--precision bf16` may run on the CPU, independent of Phalanx's own check."""
    try:
        return " avx512_bf16" in pathlib.Path("/proc/cpuinfo").read_text()
    except OSError:
        return False


# bf16 training on the CPU needs AVX512-BF16 (runtime/bf16.c refuses it elsewhere, and
# test_bf16.py checks that refusal on such a CPU); CI machines of one kind may differ in it
needs_cpu_bf16 = pytest.mark.skipif(
    not cpu_has_avx512_bf16(),
    reason="this CPU has no AVX512-BF16 (/proc/cpuinfo): --precision bf16 is refused here")


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "cluster: drives emulated hosts (network namespaces, Slurm) or a build of its "
        "own; scripts/test runs these on the release build only (-m 'not cluster' under the "
        "sanitizers, whose checks of the same code the other tests make)")
    config.addinivalue_line(
        "markers", "long: a long training run (minutes under the sanitizers); scripts/test runs "
        "these on the release build only, the short runs check the same code under ASan/UBSan")


@pytest.fixture(scope="session")
def build_dir():
    if not (BUILD / "launcher" / "phalanx").exists():
        pytest.fail(f"no build at {BUILD}: run scripts/test (or meson setup build && ninja -C build)")
    return BUILD


@pytest.fixture(scope="session")
def phalanx(build_dir):
    return str(build_dir / "launcher" / "phalanx")


@pytest.fixture(scope="module")
def mpi_hello(tmp_path_factory):
    """tests/mpi_hello.c built by hand with mpicc (no meson build needed)."""
    mpicc = shutil.which("mpicc")
    assert mpicc, "mpicc not found (Debian: libopenmpi-dev; scripts/install-deps installs it)"
    exe = tmp_path_factory.mktemp("mpi") / "mpi_hello"
    r = subprocess.run([mpicc, "-O2", "-o", str(exe), str(ROOT / "tests" / "mpi_hello.c")],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    return exe


@pytest.fixture(scope="module")
def corpus(request, tmp_path_factory):
    """A directory holding train.bin, structured text of the test module's
    CORPUS = (characters, seed); a module whose runs read other files defines
    its own `corpus`."""
    characters, seed = request.module.CORPUS
    d = tmp_path_factory.mktemp("corpus")
    write_shard(d / "train.bin", text_tokens(structured_text(characters, seed=seed)))
    return d


@pytest.fixture(scope="module")
def reference(request, phalanx, corpus, tmp_path_factory):
    """The test module's RUN trained on one rank, as runs.launch returns it:
    the run every layout is compared with."""
    from runs import launch  # here, not at the top: runs.py takes run from this file
    return launch(phalanx, tmp_path_factory.mktemp("ref"), 1,
                  ["--data", corpus / "train.bin", *request.module.RUN])


def run(cmd, **kwargs):
    """Runs a command, returns CompletedProcess with text output; never raises on exit status."""
    kwargs.setdefault("timeout", 300)
    return subprocess.run([str(c) for c in cmd], capture_output=True, text=True, **kwargs)


def processes_naming(marker):
    """PIDs of the processes whose command line holds `marker` (a path unique
    to the test): mpirun and its ranks run in sessions of their own."""
    pids = []
    for entry in os.listdir("/proc"):
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                if marker.encode() in f.read():
                    pids.append(int(entry))
        except (OSError, ValueError):
            pass
    return pids
