"""Shared fixtures for the integration tests.

They run under Debian's /usr/bin/python3 (which has python3-torch, numpy,
h5py); scripts/test takes care of that. PHALANX_BUILD names the meson build
directory (default: build/ at the repository root)."""
import os
import pathlib
import subprocess

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
BUILD = pathlib.Path(os.environ.get("PHALANX_BUILD", ROOT / "build")).resolve()


@pytest.fixture(scope="session")
def build_dir():
    if not (BUILD / "launcher" / "phalanx").exists():
        pytest.fail(f"no build at {BUILD}: run scripts/test (or meson setup build && ninja -C build)")
    return BUILD


@pytest.fixture(scope="session")
def phalanx(build_dir):
    return str(build_dir / "launcher" / "phalanx")


def run(cmd, **kwargs):
    """Runs a command, returns CompletedProcess with text output; never raises on exit status."""
    kwargs.setdefault("timeout", 300)
    return subprocess.run([str(c) for c in cmd], capture_output=True, text=True, **kwargs)
