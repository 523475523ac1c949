"""Shared fixtures for the integration tests.

They run under Debian's /usr/bin/python3 (which has python3-torch, numpy,
h5py); scripts/test takes care of that. PHALANX_BUILD names the meson build
directory (default: build/ at the repository root)."""
import os
import pathlib
import shutil
import subprocess

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
BUILD = pathlib.Path(os.environ.get("PHALANX_BUILD", ROOT / "build")).resolve()


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


def run(cmd, **kwargs):
    """Runs a command, returns CompletedProcess with text output; never raises on exit status."""
    kwargs.setdefault("timeout", 300)
    return subprocess.run([str(c) for c in cmd], capture_output=True, text=True, **kwargs)
