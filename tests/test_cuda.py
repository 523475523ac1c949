"""`--device cuda` end to end.

Where no GPU is present (nvidia-smi lists none; the CI machine) the tests
check the refusals: `--device cuda` stops before training with a message that
names the problem and the fix, exits non-zero and leaves the files of an
earlier run alone; `--tf32` without cuda and unknown devices are refused.

Where a GPU is present they compare the CUDA backend with the CPU backend on
the same weights and batches, and checkpoints written from the GPU. The
tolerance is 1e-4 relative (TF32 off): the GPU's kernels sum in other orders
than the CPU's (tree reductions, cuBLAS's blocking), which moves float32
results by a few ulps per operation; over 10 steps that stays below 1e-5 in
the runs the kernel checks model, and 1e-4 leaves room while a wrong kernel
(a missed gradient term, a bad index) moves the loss by 1e-2 or more. A GPU
run repeats bit for bit on the same GPU (no atomics), so its save/resume
must be bit-identical. TF32 rounds matrix-product inputs to 10 mantissa bits
(about 5e-4 relative), so --tf32 is held to 1e-2. Multi-rank NCCL runs need
one GPU per rank and mpirun.

scripts/gpu-bundle packs this file; run-gpu-check runs the GPU tests and
test_cpu_checkpoint_is_read_by_h5py, and its table shows the errors each
test records (record_property)."""
import json
import re
import shutil
import subprocess

import h5py
import numpy as np
import pytest

from conftest import BUILD, run
from runs import assert_same_run, launch, without_timings

MODEL = ["--layers", "2", "--heads", "4", "--dim", "64", "--seq-len", "64", "--seed", "3"]
RUN = MODEL + ["--global-batch", "8", "--micro-batch", "4", "--steps", "10", "--quiet"]
CORPUS = (40000, 9)  # characters, seed: conftest.py's corpus


def gpu_count():
    if not shutil.which("nvidia-smi"):
        return 0
    listing = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True)
    return sum(line.startswith("GPU ") for line in listing.stdout.splitlines())


GPUS = gpu_count()
CUDA_BUILT = (BUILD / "tests" / "gpu" / "gpu_check").exists()
needs_gpu = pytest.mark.skipif(GPUS == 0 or not CUDA_BUILT,
                               reason=f"needs a GPU and the CUDA build (GPUs: {GPUS}, "
                                      f"CUDA built: {CUDA_BUILT})")
HAVE_MPIRUN = shutil.which("mpirun") is not None
needs_two_gpus = pytest.mark.skipif(GPUS < 2 or not CUDA_BUILT or not HAVE_MPIRUN,
                                    reason=f"NCCL runs need one GPU per rank and mpirun "
                                           f"(GPUs: {GPUS}, mpirun: {HAVE_MPIRUN})")
TF32_RTOL = 1e-2
without_gpu = pytest.mark.skipif(GPUS > 0, reason="a GPU is present: the refusal cannot happen")


def measured(reference, result):
    """The largest relative loss error and parameter error over the largest
    parameter, as assert_same_run judges them, formatted for the table."""
    loss = np.array([r["loss"] for r in result[0]])
    expected = np.array([r["loss"] for r in reference[0]])
    params_error = np.abs(result[1] - reference[1]).max() / np.abs(reference[1]).max()
    return {"loss": f"{np.abs(loss / expected - 1).max():.1e}", "params": f"{params_error:.1e}"}


def record(record_property, reference, result):
    for name, value in measured(reference, result).items():
        record_property(name, value)


def train_args(corpus, *extra):
    """The standard 10-step run (a first half stopped at 5 steps must keep
    --train-samples 80, the schedule of all 10)."""
    return ["--data", corpus / "train.bin", *RUN, *extra]


# ---------------------------------------------------------------------------
# every machine

@without_gpu
@pytest.mark.parametrize("ranks", [1, 2])
def test_cuda_without_a_gpu_is_refused_clearly(phalanx, corpus, tmp_path, ranks):
    metrics = tmp_path / "metrics.jsonl"
    metrics.write_text('{"step": 1, "loss": 5.0}\n')  # an earlier run's
    before = metrics.read_bytes()
    args = train_args(corpus, "--device", "cuda", "--metrics", metrics)
    cmd = [phalanx, "train", *args] if ranks == 1 else [phalanx, "run", "-n", ranks, "--", *args]
    result = run(cmd, timeout=120)
    assert result.returncode != 0
    if CUDA_BUILT:
        assert "--device cuda: no CUDA device is usable here" in result.stderr, result.stderr
        assert "use --device cpu" in result.stderr
        if ranks == 1:
            assert result.returncode == 1
    else:
        assert "built without the CUDA backend" in result.stderr, result.stderr
        assert "-Dcuda=enabled" in result.stderr
    assert "| loss" not in result.stdout  # no step ran
    assert metrics.read_bytes() == before


@pytest.mark.parametrize("args,expected", [
    (["--tf32"], "--tf32 needs --device cuda"),
    (["--device", "tpu"], "--device: 'tpu' is not a device (cpu or cuda)"),
    (["--device", "cpu-staged", "--tf32"], "--tf32 needs --device cuda"),
    (["--device"], "option '--device' needs a value"),
])
def test_bad_device_options(phalanx, corpus, args, expected):
    result = run([phalanx, "train", *train_args(corpus), *args])
    assert result.returncode == 2, (result.returncode, result.stderr)
    assert expected in result.stderr, result.stderr


def test_cpu_is_the_default_and_is_named(phalanx, corpus):
    args = [a for a in train_args(corpus, "--steps", "1") if a != "--quiet"]
    result = run([phalanx, "train", *args])
    assert result.returncode == 0, result.stderr
    assert re.search(r"; device cpu$", result.stdout.splitlines()[0]), result.stdout


def test_cpu_checkpoint_is_read_by_h5py(phalanx, corpus, tmp_path):
    """The bundle's CPU-side check (run-gpu-check --cpu-only): 10 steps on the
    CPU, whose last checkpoint h5py reads bit for bit."""
    ckpt = tmp_path / "ckpt"
    rows, params, _ = launch(phalanx, tmp_path / "cpu", 1,
                             train_args(corpus, "--ckpt-dir", ckpt, "--ckpt-every", "5"))
    assert [r["step"] for r in rows] == list(range(1, 11))
    stored = checkpoint_params(ckpt / "step_00000010" / "index.h5",
                               tmp_path / "cpu" / "params.bin.json")
    for t in json.loads((tmp_path / "cpu" / "params.bin.json").read_text())["tensors"]:
        assert np.array_equal(stored[t["name"]],
                              params[t["offset"]:t["offset"] + stored[t["name"]].size]), t["name"]


def test_help_documents_the_device(phalanx):
    text = run([phalanx, "train", "--help"]).stdout
    assert "--device cpu|cuda" in text and "--tf32" in text


# ---------------------------------------------------------------------------
# every machine: the GPU's code paths on the CPU kernels (--device cpu-staged:
# separate buffers, uploads and downloads, the pinned-style host mirror that
# checkpoints read, each rank copying only its share into it). The kernels
# are the cpu ones, so everything must be bit-identical to --device cpu.

STAGED = ["--layout", "2x2x1", "--ckpt-every", "5"]


def checkpoint_params(index, manifest_path):
    manifest = json.loads(manifest_path.read_text())
    with h5py.File(index, "r") as f:
        return {t["name"]: f["params"][t["name"]][()].ravel() for t in manifest["tensors"]}


def test_staged_device_is_bit_identical_to_cpu(phalanx, corpus, tmp_path):
    runs = {}
    for device in ["cpu", "cpu-staged"]:
        ckpt = tmp_path / f"ckpt-{device}"
        runs[device] = launch(phalanx, tmp_path / device, 4,
                              train_args(corpus, *STAGED, "--device", device, "--ckpt-dir", ckpt))
    cpu, staged = runs["cpu"], runs["cpu-staged"]
    assert without_timings(staged[0]) == without_timings(cpu[0])
    assert np.array_equal(staged[1], cpu[1]) and np.array_equal(staged[2], cpu[2])
    # the mirror each rank filled with only its share holds every tensor whole
    manifest = tmp_path / "cpu-staged" / "params.bin.json"
    for step in ["step_00000005", "step_00000010"]:
        a = checkpoint_params(tmp_path / "ckpt-cpu" / step / "index.h5", manifest)
        b = checkpoint_params(tmp_path / "ckpt-cpu-staged" / step / "index.h5", manifest)
        assert all(np.array_equal(a[k], b[k]) for k in a), step
    final = checkpoint_params(tmp_path / "ckpt-cpu-staged" / "step_00000010" / "index.h5",
                              manifest)
    for t in json.loads(manifest.read_text())["tensors"]:
        assert np.array_equal(final[t["name"]],
                              staged[1][t["offset"]:t["offset"] + final[t["name"]].size])


def test_staged_device_resumes_bit_for_bit(phalanx, corpus, tmp_path):
    """Resume uploads params, m and v from the mirror: 5 + 5 steps equal 10."""
    straight = launch(phalanx, tmp_path / "straight", 4,
                      train_args(corpus, *STAGED, "--device", "cpu-staged"))
    ckpt = tmp_path / "ckpt"
    first = train_args(corpus, *STAGED, "--device", "cpu-staged", "--ckpt-dir", ckpt,
                       "--ckpt-mode", "sync")
    first[first.index("--steps") + 1] = "5"
    first += ["--train-samples", "80"]  # the schedule of the whole 10-step run
    launch(phalanx, tmp_path / "first", 4, first)
    resumed = launch(phalanx, tmp_path / "resumed", 4,
                     train_args(corpus, *STAGED, "--device", "cpu-staged", "--ckpt-dir", ckpt,
                                "--resume", "latest"))
    assert without_timings(resumed[0]) == without_timings(straight[0])[5:]
    assert np.array_equal(resumed[1], straight[1])


# ---------------------------------------------------------------------------
# with a GPU

@pytest.fixture(scope="module")
def cpu_reference(phalanx, corpus, tmp_path_factory):
    return launch(phalanx, tmp_path_factory.mktemp("cpu"), 1, train_args(corpus))


@needs_gpu
@pytest.mark.parametrize("optim", ["lamb", "adamw"])
def test_cuda_matches_cpu(phalanx, corpus, tmp_path, optim, record_property):
    cpu = launch(phalanx, tmp_path / "cpu", 1, train_args(corpus, "--optim", optim))
    gpu = launch(phalanx, tmp_path / "gpu", 1, train_args(corpus, "--optim", optim,
                                                          "--device", "cuda"))
    record(record_property, cpu, gpu)
    assert_same_run(cpu, gpu, rtol=1e-4)
    np.testing.assert_allclose([r["grad_norm"] for r in gpu[0]],
                               [r["grad_norm"] for r in cpu[0]], rtol=1e-4)


@needs_gpu
def test_cuda_tf32_matches_cpu(phalanx, corpus, tmp_path, cpu_reference, record_property):
    gpu = launch(phalanx, tmp_path / "tf32", 1, train_args(corpus, "--device", "cuda", "--tf32"))
    record(record_property, cpu_reference, gpu)
    assert_same_run(cpu_reference, gpu, rtol=TF32_RTOL)


@needs_gpu
def test_cuda_bf16_matches_cpu_bf16(phalanx, corpus, tmp_path, record_property):
    """--precision bf16 on both: the same rounding (inputs of every product to
    bf16, fp32 sums), so the runs differ only by sum order, and a rounding
    flipped by it: 1e-3, as test_bf16.py holds bf16 layouts."""
    probe = run([phalanx, "train", *train_args(corpus, "--precision", "bf16", "--steps", "1")])
    if probe.returncode != 0:
        pytest.skip(f"this host's CPU cannot be the bf16 reference: {probe.stderr.strip()}")
    cpu = launch(phalanx, tmp_path / "cpu", 1, train_args(corpus, "--precision", "bf16"))
    gpu = launch(phalanx, tmp_path / "gpu", 1,
                 train_args(corpus, "--device", "cuda", "--precision", "bf16"))
    record(record_property, cpu, gpu)
    assert_same_run(cpu, gpu, rtol=1e-3)


@needs_gpu
def test_cuda_repeats_bit_for_bit_across_a_resume(phalanx, corpus, tmp_path):
    straight = launch(phalanx, tmp_path / "straight", 1, train_args(corpus, "--device", "cuda"))
    ckpt = tmp_path / "ckpt"
    first = train_args(corpus, "--device", "cuda", "--ckpt-dir", ckpt, "--ckpt-every", "5")
    first[first.index("--steps") + 1] = "5"
    first += ["--train-samples", "80"]  # the schedule of the whole 10-step run
    launch(phalanx, tmp_path / "first", 1, first)
    second = launch(phalanx, tmp_path / "second", 1,
                    train_args(corpus, "--device", "cuda", "--ckpt-dir", ckpt, "--resume",
                               "latest"))
    assert without_timings(second[0]) == without_timings(straight[0])[5:]
    assert np.array_equal(second[1], straight[1])


@needs_gpu
def test_gpu_checkpoint_resumes_on_cpu(phalanx, corpus, tmp_path, cpu_reference,
                                       record_property):
    """The checkpoint of step 5 (copied from the GPU through pinned memory)
    holds the dumped parameters bit for bit in h5py, and the CPU resumes it
    on the CPU's own trajectory (1e-4)."""
    ckpt = tmp_path / "ckpt"
    first = train_args(corpus, "--device", "cuda", "--ckpt-dir", ckpt, "--ckpt-every", "5")
    first[first.index("--steps") + 1] = "5"
    first += ["--train-samples", "80"]  # the schedule of the whole 10-step run
    _, params, _ = launch(phalanx, tmp_path / "gpu", 1, first)
    stored = checkpoint_params(ckpt / "step_00000005" / "index.h5",
                               tmp_path / "gpu" / "params.bin.json")
    for t in json.loads((tmp_path / "gpu" / "params.bin.json").read_text())["tensors"]:
        assert np.array_equal(stored[t["name"]],
                              params[t["offset"]:t["offset"] + stored[t["name"]].size]), t["name"]
    resumed = launch(phalanx, tmp_path / "cpu", 1,
                     train_args(corpus, "--ckpt-dir", ckpt, "--resume", "latest"))
    reference = (cpu_reference[0][5:], cpu_reference[1], None)
    record(record_property, reference, resumed)
    assert_same_run(reference, resumed, rtol=1e-4)


@needs_two_gpus
@pytest.mark.parametrize("layout", ["2x1x1", "1x2x1", "1x1x2"])
def test_nccl_layouts_match_one_cpu_rank(phalanx, corpus, tmp_path, cpu_reference, layout):
    gpu = launch(phalanx, tmp_path / layout, 2,
                 train_args(corpus, "--device", "cuda", "--layout", layout))
    assert_same_run(cpu_reference, gpu, rtol=1e-4)


@needs_two_gpus
def test_nccl_checkpoint_reshards_to_one_cpu_rank(phalanx, corpus, tmp_path, cpu_reference):
    """dp=2 on two GPUs: each rank copies only its half of every tensor to the
    host; the checkpoint must still be whole and resume on one CPU rank."""
    ckpt = tmp_path / "ckpt"
    first = train_args(corpus, "--device", "cuda", "--layout", "2x1x1", "--ckpt-dir", ckpt,
                       "--ckpt-every", "5")
    first[first.index("--steps") + 1] = "5"
    first += ["--train-samples", "80"]  # the schedule of the whole 10-step run
    launch(phalanx, tmp_path / "gpu", 2, first)
    resumed = launch(phalanx, tmp_path / "cpu", 1,
                     train_args(corpus, "--ckpt-dir", ckpt, "--resume", "latest"))
    rows, params, _ = cpu_reference
    np.testing.assert_allclose([r["loss"] for r in resumed[0]], [r["loss"] for r in rows[5:]],
                               rtol=1e-4)
    np.testing.assert_allclose(resumed[1], params, rtol=1e-4, atol=1e-4 * np.abs(params).max())
