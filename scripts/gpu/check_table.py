"""The table run-gpu-check prints last: one row per check, from the logs in
LOGS (environment.log and kernels.log, whose sections start with
'== NAME (exit N)', pytest.xml and bench.json). Writes it to LOGS/table.txt
too. Exit 1 when a row failed, else 0; a check that could not run here (no
GPU, one GPU, no time left) is said so and is no failure."""
import argparse
import json
import pathlib
import re
import sys
import xml.etree.ElementTree as ET

SKIP = 77  # the GPU programs' "no CUDA device"


def sections(path):
    """{name: (exit status, text)} of a log made of '== NAME (exit N)' sections."""
    found = {}
    if not path.exists():
        return found
    parts = re.split(r"^== (\S+) \(exit (\d+)\)\n", path.read_text(errors="replace"), flags=re.M)
    for name, status, text in zip(parts[1::3], parts[2::3], parts[3::3]):
        found[name] = (int(status), text)
    return found


def program_row(found, name, no_gpu):
    if name not in found:
        return no_gpu or "not run"
    status, text = found[name]
    if status == SKIP and no_gpu:
        return no_gpu
    failed = [line.split("  ")[0].strip() for line in text.splitlines() if " FAIL" in line]
    if status != 0:
        return f"FAIL (exit {status}): " + (", ".join(failed[:3]) or _last(text))
    return None


def _last(text):
    lines = text.strip().splitlines()
    return lines[-1][:80] if lines else "(no output)"


def kernel_rows(found, no_gpu):
    rows = []
    verdict = program_row(found, "gpu_check", no_gpu)
    if verdict is None:
        text = found["gpu_check"][1]
        errors = [float(e) for e in re.findall(r"= ([0-9.e+-]+)$", text, flags=re.M)]
        verdict = f"ok: {len(errors)} checks, worst {max(errors, default=0):.1e}"
    rows.append(("CUDA kernels vs CPU kernels", "1e-4 rel", verdict))
    verdict = program_row(found, "nccl_check", no_gpu)
    if verdict is None:
        verdict = f"ok: {found['nccl_check'][1].count(' ok ')} collectives"
    rows.append(("NCCL communicator, world of 1", "exact", verdict))
    verdict = program_row(found, "gpu_sgemm_bench", no_gpu)
    if verdict is None:
        best = re.findall(r"sgemm (\w+)\s+all .* ([0-9]+) GFLOP/s", found["gpu_sgemm_bench"][1])
        verdict = ", ".join(f"{mode} {gflops} GFLOP/s" for mode, gflops in best) or "ok"
    rows.append(("cuBLAS sgemm, GPT-2 124M shapes", "-", verdict))
    return rows


PYTEST_ROWS = [
    ("test_cpu_checkpoint_is_read_by_h5py", "cpu: 10 steps, checkpoint read by h5py", "bit-exact"),
    ("test_cuda_matches_cpu[lamb]", "10 steps cuda vs cpu, LAMB", "1e-4 rel"),
    ("test_cuda_matches_cpu[adamw]", "10 steps cuda vs cpu, AdamW", "1e-4 rel"),
    ("test_cuda_tf32_matches_cpu", "10 steps cuda --tf32 vs cpu, LAMB", "1e-2 rel"),
    ("test_cuda_bf16_matches_cpu_bf16", "10 steps cuda vs cpu, --precision bf16", "1e-3 rel"),
    ("test_cuda_repeats_bit_for_bit_across_a_resume", "GPU checkpoint resumed on cuda",
     "bit-exact"),
    ("test_gpu_checkpoint_resumes_on_cpu", "GPU checkpoint: h5py, resumed on cpu",
     "exact; 1e-4"),
    ("test_nccl_layouts_match_one_cpu_rank[2x1x1]", "NCCL 2 GPUs, dp=2 vs cpu", "1e-4 rel"),
    ("test_nccl_layouts_match_one_cpu_rank[1x2x1]", "NCCL 2 GPUs, pp=2 vs cpu", "1e-4 rel"),
    ("test_nccl_layouts_match_one_cpu_rank[1x1x2]", "NCCL 2 GPUs, sp=2 vs cpu", "1e-4 rel"),
    ("test_nccl_checkpoint_reshards_to_one_cpu_rank", "NCCL dp=2 checkpoint on 1 cpu rank",
     "1e-4 rel"),
]


def pytest_rows(path, no_gpu):
    cases = {}
    if path.exists():
        for case in ET.parse(path).getroot().iter("testcase"):
            cases[case.get("name")] = case
    rows = []
    for name, label, bound in PYTEST_ROWS:
        case = cases.get(name)
        if case is None:
            verdict = "not run" if name == PYTEST_ROWS[0][0] else (no_gpu or "not run")
        elif case.find("failure") is not None or case.find("error") is not None:
            bad = case.find("failure") if case.find("failure") is not None else case.find("error")
            verdict = "FAIL: " + (bad.get("message") or "")[:70].replace("\n", " ")
        elif case.find("skipped") is not None:
            verdict = "skipped: " + (case.find("skipped").get("message") or "")[:60]
        else:
            measured = {p.get("name"): p.get("value") for p in case.iter("property")}
            verdict = "ok" + "".join(f", {k} {v}" for k, v in measured.items())
        rows.append((label, bound, verdict))
    return rows


def bench_rows(path, no_gpu):
    labels = [("checkpoint every step: stall/step", "-"), ("tokens/s GPT-2 124M fp32", "-"),
              ("tokens/s GPT-2 124M tf32", "-")]
    if not path.exists():
        return [(label, bound, no_gpu or "not run") for label, bound in labels]
    results = json.loads(path.read_text())
    return [(*labels[0], stall_text(results)), (*labels[1], speed_text(results, "fp32")),
            (*labels[2], speed_text(results, "tf32"))]


def stall_text(results):
    ckpt = results.get("phalanx_ckpt_every_step", {})
    if "error" in ckpt or "stall_ms_median" not in ckpt:
        return "FAIL: " + ckpt["error"] if "error" in ckpt else "not run"
    ratio = f", step {ckpt['step_ratio']:.2f}x plain" if "step_ratio" in ckpt else ""
    return f"median {ckpt['stall_ms_median']:.1f} ms, max {ckpt['stall_ms_max']:.1f} ms{ratio}"


def speed_text(results, precision):
    ours = results.get(f"phalanx_{precision}", {})
    if "tokens_per_s" not in ours:
        return "FAIL: phalanx " + ours["error"] if "error" in ours else "not run"
    text = f"phalanx {ours['tokens_per_s']:.0f}"
    timed = results.get("phalanx_fp32_timed", {})
    if precision == "fp32" and "cublas_share" in timed:
        text += f" ({100 * timed['cublas_share']:.0f}% cuBLAS)"
    for mode in ["eager", "compile"]:
        theirs = results.get(f"torch_{mode}_{precision}", {})
        if "tokens_per_s" in theirs:
            text += (f"; torch {mode} {theirs['tokens_per_s']:.0f}"
                     f" (x{ours['tokens_per_s'] / theirs['tokens_per_s']:.2f})")
        else:
            text += f"; torch {mode}: {theirs.get('error', 'not run')[:40]}"
    return text


def library_row(found):
    if "libraries" not in found:
        return ("bundle: programs' libraries resolve", "-", "not run")
    status, text = found["libraries"]
    missing = sorted(set(re.findall(r"^\s*(\S+) => not found", text, flags=re.M)))
    if status != 0 or missing:
        return ("bundle: programs' libraries resolve", "-",
                "FAIL: " + (", ".join(missing) or _last(text)))
    return ("bundle: programs' libraries resolve", "-", "ok")


def table(rows):
    widths = [max(len(r[i]) for r in rows) for i in range(2)]
    lines = [f"{'check':{widths[0]}s}  {'bound':{widths[1]}s}  result"]
    lines += [f"{a:{widths[0]}s}  {b:{widths[1]}s}  {c}" for a, b, c in rows]
    return "\n".join(lines) + "\n"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("logs", type=pathlib.Path)
    parser.add_argument("--cpu-only", action="store_true")
    parser.add_argument("--gpus", type=int, default=0)
    args = parser.parse_args()
    no_gpu = "no GPU (--cpu-only)" if args.cpu_only else ("no GPU" if args.gpus == 0 else None)
    environment = sections(args.logs / "environment.log")
    rows = [library_row(environment)]
    rows += kernel_rows(sections(args.logs / "kernels.log"), no_gpu)
    rows += pytest_rows(args.logs / "pytest.xml", no_gpu)
    rows += bench_rows(args.logs / "bench.json", no_gpu)
    text = table(rows)
    (args.logs / "table.txt").write_text(text)
    sys.stdout.write(text)
    return 1 if any(r[2].startswith(("FAIL", "not run")) and r[2] != no_gpu for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
