"""scripts/gpu-bundle: the GPU checks packed for a bare CUDA machine.

`--check-here` unpacks the bundle and runs `run-gpu-check --cpu-only` in a
mount namespace where Debian's copies of the Open MPI, HDF5 and OpenBLAS
libraries it carries are hidden; it first proves the hiding works (the
build's own phalanx cannot start there). It builds the CUDA build in
build-gpu at the repository root (PHALANX_GPU_BUILD), reused when present,
so it needs nvcc and root (unshare -m)."""
import os
import shutil
import subprocess
import tarfile

import pytest

from conftest import ROOT, run

pytestmark = pytest.mark.cluster  # conftest.py: the sanitizer pass leaves these out

GPU_BUNDLE = ROOT / "scripts" / "gpu-bundle"
needs_cuda_and_root = pytest.mark.skipif(
    os.geteuid() != 0 or not (shutil.which("nvcc") or os.path.exists("/usr/local/cuda/bin/nvcc")),
    reason="needs root (unshare -m) and nvcc (the CUDA build)")


@pytest.fixture(scope="module")
def checked(tmp_path_factory):
    d = tmp_path_factory.mktemp("bundle")
    result = run([GPU_BUNDLE, "--check-here", "--output", d / "phalanx-gpu.tar.gz", d / "logs"],
                 timeout=900)
    if result.returncode == 3:  # gpu-bundle: this machine's CUDA toolkit is incomplete
        pytest.skip("no usable CUDA toolkit: " + result.stderr[-1500:])
    return d, result


@needs_cuda_and_root
def test_check_here_runs_the_cpu_checks_with_the_system_libraries_hidden(checked):
    d, result = checked
    assert result.returncode == 0, result.stdout + result.stderr
    for hidden in ["libmpi.so", "libhdf5_serial.so", "libopenblas", "openmpi"]:
        assert hidden in result.stdout.split("hidden:")[1].splitlines()[0], hidden
    assert "phalanx cannot start here" in result.stdout
    assert "error while loading shared libraries" in result.stdout
    table = (d / "logs" / "table.txt").read_text()
    assert result.stdout.endswith(table)
    rows = {line[:40].strip(): line[40:] for line in table.splitlines()[1:]}
    assert rows["bundle: programs' libraries resolve"].endswith(" ok")
    assert rows["cpu: 10 steps, checkpoint read by h5py"].endswith(" ok")
    assert rows["CUDA kernels vs CPU kernels"].endswith("no GPU (--cpu-only)")
    assert rows["tokens/s GPT-2 124M fp32"].endswith("no GPU (--cpu-only)")


@needs_cuda_and_root
def test_bundle_carries_its_libraries_but_not_the_machines(checked):
    d, result = checked
    bundle = d / "phalanx-gpu.tar.gz"
    assert bundle.stat().st_size <= 48 << 20
    names = {os.path.relpath(n, "phalanx-gpu") for n in tarfile.open(bundle).getnames()}
    assert {"run-gpu-check", "bin/phalanx", "build/launcher/phalanx", "tests/test_cuda.py",
            "gpu/torch_gpt2.py", "data/gpt2-random.bin"} <= names
    libs = {os.path.basename(n) for n in names if n.startswith("lib/")}
    assert {"libmpi.so.40", "libhdf5_serial.so.103", "libopenblas.so.0"} <= libs
    assert not {lib for lib in libs if lib.startswith(("libc.so", "libcudart", "libcublas",
                                                       "libnccl", "libcuda."))}


@pytest.mark.parametrize("args,expected", [
    (["--bogus"], "unknown option '--bogus'"),
    (["somewhere"], "unexpected argument 'somewhere'"),
    (["--check-here", "a", "b"], "unexpected argument 'b'"),
    (["--output"], "--output needs a file name"),
])
def test_bad_arguments_are_refused(args, expected, tmp_path):
    result = run([GPU_BUNDLE, *args], cwd=tmp_path)
    assert result.returncode != 0
    assert expected in result.stderr, result.stderr
    assert not list(tmp_path.iterdir())


def test_run_gpu_check_help_names_its_rows():
    result = subprocess.run([ROOT / "scripts" / "gpu" / "run-gpu-check", "--help"],
                            capture_output=True, text=True)
    assert result.returncode == 2
    assert "run-gpu-check [--cpu-only] LOGS" in result.stderr
    assert "within 8 minutes" in result.stderr
