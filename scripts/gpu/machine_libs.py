"""Prints the folders, joined by ':', that hold the libraries the bundle takes
from the machine rather than carrying them: the CUDA runtime and cuBLAS (from
the CUDA toolkit beside nvcc, else from NVIDIA's Python wheels), NCCL (from
the nvidia.nccl wheel, else from the toolkit) and the driver's libcuda when
the loader's cache lacks it. Names what it cannot find on stderr."""
import glob
import os
import shutil
import subprocess
import sys

CUDA = ["libcudart.so.13", "libcublas.so.13", "libcublasLt.so.13"]
NCCL = ["libnccl.so.2"]
DRIVER_DIRS = ["/usr/local/nvidia/lib64", "/usr/lib/wsl/lib"]


def toolkit_dirs():
    roots = [os.environ.get("CUDA_HOME", ""), "/usr/local/cuda"]
    nvcc = shutil.which("nvcc")
    if nvcc:
        roots.insert(0, os.path.dirname(os.path.dirname(os.path.realpath(nvcc))))
    return [os.path.join(r, sub) for r in roots if r
            for sub in ["lib64", "targets/x86_64-linux/lib"]]


def wheel_dirs(first=None):
    """Library folders of NVIDIA's wheels (the `nvidia` namespace package),
    `first`'s before the others."""
    try:
        import nvidia
    except ImportError:
        return []
    found = []
    for root in nvidia.__path__:
        found += sorted(os.path.dirname(p) for p in glob.glob(f"{root}/**/lib*.so*", recursive=True))
    found = list(dict.fromkeys(found))
    return sorted(found, key=lambda d: first not in d.split(os.sep)) if first else found


def find(name, dirs):
    return next((d for d in dirs if os.path.exists(os.path.join(d, name))), None)


def main():
    chosen, missing = [], []
    for names, dirs in [(CUDA, toolkit_dirs() + wheel_dirs()),
                        (NCCL, wheel_dirs("nccl") + toolkit_dirs())]:
        for name in names:
            d = find(name, dirs)
            (chosen.append(d) if d else missing.append(name))
    cache = subprocess.run(["ldconfig", "-p"], capture_output=True, text=True).stdout
    if "libcuda.so.1" not in cache:
        d = find("libcuda.so.1", DRIVER_DIRS)
        if d:
            chosen.append(d)
    if missing:
        print("machine_libs: not found on this machine: " + ", ".join(missing), file=sys.stderr)
    print(":".join(dict.fromkeys(chosen)))


if __name__ == "__main__":
    main()
