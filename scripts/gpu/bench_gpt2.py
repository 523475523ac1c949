"""GPT-2 124M training throughput on one GPU, Phalanx against PyTorch.

Runs, each in its own process with a time limit, all inside --deadline:
  phalanx fp32             tokens/s (median of the steps after 2)
  phalanx fp32, timed      PHALANX_CUDA_GEMM_TIMING=1: GPU time in cuBLAS over
                           the summed step time = cuBLAS's share of a step
  phalanx tf32             --tf32
  phalanx fp32 + ckpt      a checkpoint every step (params, m and v: 1.5 GB):
                           the training thread's stall per step
  torch eager / compile    torch_gpt2.py, fp32 and tf32: the same model,
                           batch and precision in PyTorch
Writes every number to --json and every run's output to --log; prints a
summary. A run that fails or outlasts its limit is recorded as such."""
import argparse
import json
import os
import pathlib
import re
import statistics
import subprocess
import sys
import tempfile
import time

HERE = pathlib.Path(__file__).resolve().parent
MODEL = ["--vocab", "50304", "--layers", "12", "--heads", "12", "--dim", "768",
         "--seq-len", "1024", "--optim", "adamw", "--lr", "3e-4", "--quiet"]
MIN_SECONDS = 15  # a run given less than this is not started


class Bench:
    def __init__(self, args):
        self.args = args
        self.deadline = time.monotonic() + args.deadline
        self.results = {"batch": args.batch, "steps": args.steps}
        self.log = open(args.log, "a")

    def run(self, label, cmd, limit, env=None):
        """Runs cmd, its output into the log: (the CompletedProcess, None), or
        (None, why) when it failed, timed out or had no time left."""
        budget = min(limit, self.deadline - time.monotonic())
        if budget < MIN_SECONDS:
            return None, "not run: no time left"
        self.log.write(f"\n== {label}: {' '.join(map(str, cmd))}\n")
        self.log.flush()
        try:
            done = subprocess.run([str(c) for c in cmd], capture_output=True, text=True,
                                  timeout=budget, env={**os.environ, **(env or {})})
        except subprocess.TimeoutExpired as e:
            self.log.write(_text(e.stdout) + _text(e.stderr))
            return None, f"did not finish in {budget:.0f} s"
        self.log.write(done.stdout + done.stderr)
        self.log.flush()
        if done.returncode != 0:
            last = (done.stderr.strip().splitlines() or ["(no message)"])[-1]
            return None, f"exit {done.returncode}: {last[:120]}"
        return done, None

    def phalanx(self, name, *extra, env=None):
        metrics = self.tmp / f"{name}.jsonl"
        cmd = [self.args.phalanx, "train", "--data", self.args.data, *MODEL, "--device", "cuda",
               "--micro-batch", self.args.batch, "--global-batch", self.args.batch,
               "--steps", self.args.steps, "--metrics", metrics, *extra]
        done, error = self.run(f"phalanx {name}", cmd, self.args.run_limit, env)
        if error:
            self.results[f"phalanx_{name}"] = {"error": error}
            return None, None
        rows = [json.loads(line) for line in metrics.read_text().splitlines()]
        steady = rows[2:] or rows[-1:]
        self.results[f"phalanx_{name}"] = {
            "tokens_per_s": statistics.median(r["tokens_per_s"] for r in steady),
            "step_ms": statistics.median(r["step_ms"] for r in steady)}
        return rows, done

    def torch(self, mode, precision):
        cmd = [sys.executable, HERE / "torch_gpt2.py", "--mode", mode, "--precision", precision,
               "--batch", self.args.batch]
        limit = self.args.run_limit * (2 if mode == "compile" else 1)
        done, error = self.run(f"torch {mode} {precision}", cmd, limit)
        key = f"torch_{mode}_{precision}"
        if error:
            self.results[key] = {"error": error}
        else:
            self.results[key] = json.loads(done.stdout.strip().splitlines()[-1])

    def all(self):
        with tempfile.TemporaryDirectory(prefix="phalanx-bench-gpt2.") as tmp:
            self.tmp = pathlib.Path(tmp)
            plain, _ = self.phalanx("fp32")
            self.timed_share()
            self.phalanx("tf32", "--tf32")
            self.checkpoint_stall(plain)
            for precision in ["fp32", "tf32"]:
                self.torch("eager", precision)
            for precision in ["fp32", "tf32"]:
                self.torch("compile", precision)
        pathlib.Path(self.args.json).write_text(json.dumps(self.results, indent=1) + "\n")

    def timed_share(self):
        rows, done = self.phalanx("fp32_timed", env={"PHALANX_CUDA_GEMM_TIMING": "1"})
        if not rows:
            return
        m = re.search(r"cuBLAS time ([0-9.]+) s in (\d+) calls", done.stderr)
        total_s = sum(r["step_ms"] for r in rows) / 1e3
        entry = self.results["phalanx_fp32_timed"]
        if m:
            entry.update(cublas_s=float(m.group(1)), cublas_calls=int(m.group(2)),
                         total_s=total_s, cublas_share=float(m.group(1)) / total_s)
        else:
            entry["error"] = "no cuBLAS timing line on stderr"

    def checkpoint_stall(self, plain):
        rows, _ = self.phalanx("ckpt_every_step", "--ckpt-dir", self.tmp / "ckpt",
                               "--ckpt-every", "1", "--ckpt-memory-dir", "none")
        if not rows:
            return
        steady = rows[2:] or rows
        entry = self.results["phalanx_ckpt_every_step"]
        entry.update(stall_ms_median=statistics.median(r["ckpt_stall_ms"] for r in steady),
                     stall_ms_max=max(r["ckpt_stall_ms"] for r in rows),
                     committed=rows[-1].get("ckpt_committed"))
        if plain:
            entry["step_ratio"] = entry["step_ms"] / self.results["phalanx_fp32"]["step_ms"]


def _text(data):
    return data.decode(errors="replace") if isinstance(data, bytes) else (data or "")


def summary(results):
    def tps(key):
        return results.get(key, {}).get("tokens_per_s")
    lines = [f"{'run (GPT-2 124M, batch %d x 1024)' % results['batch']:44s} {'tokens/s':>10s}"]
    for key, value in results.items():
        if isinstance(value, dict):
            shown = f"{value['tokens_per_s']:10.0f}" if "tokens_per_s" in value else value["error"]
            lines.append(f"{key:44s} {shown}")
    for precision in ["fp32", "tf32"]:
        ours = tps(f"phalanx_{precision}")
        for mode in ["eager", "compile"]:
            theirs = tps(f"torch_{mode}_{precision}")
            if ours and theirs:
                lines.append(f"phalanx / torch {mode} ({precision}): {ours / theirs:.2f}")
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--phalanx", required=True, help="the phalanx program")
    parser.add_argument("--data", required=True, help="a token shard (vocab below 50304)")
    parser.add_argument("--json", required=True, help="where the numbers go")
    parser.add_argument("--log", required=True, help="where every run's output goes")
    parser.add_argument("--batch", type=int, default=8, help="sequences of 1024 per step")
    parser.add_argument("--steps", type=int, default=8, help="steps of each phalanx run")
    parser.add_argument("--deadline", type=float, default=420, help="seconds for all runs")
    parser.add_argument("--run-limit", type=float, default=60,
                        help="seconds for one run (twice that for torch.compile)")
    bench = Bench(parser.parse_args())
    bench.all()
    print(summary(bench.results))


if __name__ == "__main__":
    main()
