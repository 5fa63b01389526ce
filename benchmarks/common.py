"""Shared helpers of the performance benchmarks (benchmarks/*.py): machine description, idle wait, timing,
FLOP counting, the machine's measured matmul rate, peak memory of child processes and result writing.

Not run on its own; each benchmark does

    from benchmarks.common import Bench
    b = Bench("throughput", device="cpu")      # records the machine and the load average at the start
    ...; b.result["sample"] = {...}
    b.write(out_dir)                           # benchmarks/results/throughput.json, atomically, with the end load
"""
from __future__ import annotations

import os
import platform
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable

import torch

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # `python benchmarks/x.py` as well as `python -m benchmarks.x`
    sys.path.insert(0, str(ROOT))

from tasks.io import write_json  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
BUSY = ("pytest", "dvc repro")  # other people's long jobs on a shared machine


def loadavg() -> list[float]:
    return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def machine(device: str) -> dict:
    """Where a figure was measured: host, CPU, cores, torch and its threads, the device and its name."""
    info = {"hostname": socket.gethostname(), "cpu_model": cpu_model(), "cpu_cores": os.cpu_count(),
            "cpu_cores_usable": len(os.sched_getaffinity(0)), "memory_gib": round(os.sysconf("SC_PAGE_SIZE")
                                                                                 * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
            "torch": torch.__version__, "torch_threads": torch.get_num_threads(), "device": device,
            "python": platform.python_version()}
    if device.startswith("cuda"):
        info["device_name"] = torch.cuda.get_device_name(torch.device(device))
    return info


def wait_until_idle(max_load: float = 0.7, poll_s: float = 20.0, log=print) -> float:
    """Block while someone else's test suite or `dvc repro` runs, or the 1-minute load is above max_load;
    returns the seconds waited."""
    t0 = time.time()
    while True:
        busy = subprocess.run(["pgrep", "-f", "|".join(BUSY)], capture_output=True, text=True).stdout.split()
        busy = [p for p in busy if int(p) != os.getpid()]
        if not busy and loadavg()[0] < max_load:
            return time.time() - t0
        log(f"waiting for an idle machine (load {loadavg()[0]:.2f}, busy pids {busy[:4]})")
        time.sleep(poll_s)


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed(fn: Callable[[], object], device: str = "cpu") -> tuple[float, object]:
    """(wall seconds, result) of one call, device work included."""
    sync(device)
    t0 = time.perf_counter()
    out = fn()
    sync(device)
    return time.perf_counter() - t0, out


def best_of(fn: Callable[[], object], repeat: int, device: str = "cpu") -> dict:
    """Times of `repeat` calls: the best (least disturbed) and the median."""
    times = [timed(fn, device)[0] for _ in range(repeat)]
    return {"best_s": min(times), "median_s": statistics.median(times), "repeat": repeat}


class _NoModules:
    """Stands in for FlopCounterMode's module tracker: its backward hooks refuse torch.autograd.grad (the
    ID-preserving guidance), and only the total is wanted here."""
    parents = {"Global"}

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return None


def count_flops(fn: Callable[[], object]) -> int:
    """FLOPs torch's FlopCounterMode sees in one call (matmuls, convolutions, attention; forward and backward)."""
    from torch.utils.flop_counter import FlopCounterMode
    counter = FlopCounterMode(display=False)
    counter.mod_tracker = _NoModules()
    with counter:
        fn()
    return int(counter.get_total_flops())


def matmul_rate(device: str = "cpu", dtype: torch.dtype = torch.float32, n: int | None = None, seconds: float = 3.0) -> dict:
    """FLOP/s this machine reaches on a large square torch.mm in `dtype` (n = 2048 on CPU, 8192 on a GPU): the
    best of repeated timings over about `seconds`, the reference every achieved FLOP/s is read against."""
    gpu = device.startswith("cuda")
    n = n or (8192 if gpu else 2048)
    reps = 10 if gpu else 1  # a GPU finishes one product in microseconds: time several between synchronisations
    g = torch.Generator(device="cpu").manual_seed(0)
    a = torch.randn(n, n, generator=g).to(device, dtype)
    b = torch.randn(n, n, generator=g).to(device, dtype)
    torch.mm(a, b)  # warm-up (thread pool, cuBLAS handle)
    best, calls, t_end = float("inf"), 0, time.perf_counter() + seconds
    while calls < 3 or time.perf_counter() < t_end:
        best = min(best, timed(lambda: [torch.mm(a, b) for _ in range(reps)], device)[0] / reps)
        calls += 1
    return {"n": n, "dtype": str(dtype).removeprefix("torch."), "timings": calls, "best_s": best, "flops_per_s": 2 * n ** 3 / best}


class RowCounter:
    """Rows a module is called on (a forward hook), e.g. the UNet's: NFE measured, not derived from a step count.
    `with RowCounter(pipe.unet) as c: ...; c.per_image(images, batch_size)`"""

    def __init__(self, module):
        self.rows = 0
        self.handle = module.register_forward_hook(self._hook)

    def _hook(self, module, args, output):
        self.rows += int(args[0].shape[0])

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.handle.remove()

    def per_image(self, images: int, batch_size: int) -> float:
        """Rows per rendered image; render_rows pads the last batch to batch_size, and padding rows are
        rendered (and discarded) like the others."""
        return self.rows / (-(-images // batch_size) * batch_size)


def _vm_hwm(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def _tree(pid: int) -> list[int]:
    """pid and its descendants (a `dvc repro` runs the stage in a grandchild)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        for t in Path(f"/proc/{p}/task").glob("*/children") if Path(f"/proc/{p}/task").is_dir() else []:
            try:
                todo += [int(c) for c in t.read_text().split()]
            except OSError:
                pass
    return out


def run_child(cmd: list[str], cwd: Path, env: dict, timeout: float = 1800) -> dict:
    """Run a command to its end: wall seconds, exit code, its output's tail and peak resident memory (VmHWM,
    polled every 0.1 s) of the command's own process and of the largest process in its tree (a `dvc repro`
    runs the stage in a grandchild, a stage its Prefect server in a child). Not the kernel's maxrss: a
    child's starts from its parent's size at fork, and this parent holds torch."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    out: list[bytes] = []
    reader = threading.Thread(target=lambda: out.append(proc.stdout.read()), daemon=True)
    reader.start()
    peak: dict[int, float] = {}
    while proc.poll() is None:
        for p in _tree(proc.pid):
            peak[p] = max(peak.get(p, 0.0), _vm_hwm(p))
        if time.perf_counter() - t0 > timeout:
            proc.kill()
        time.sleep(0.1)
    wall = time.perf_counter() - t0
    reader.join()
    return {"cmd": " ".join(cmd[-3:]), "seconds": wall, "returncode": proc.returncode,
            "peak_rss_mib": peak.get(proc.pid, 0.0), "peak_rss_tree_max_mib": max(peak.values(), default=0.0),
            "output_tail": b"".join(out).decode(errors="replace")[-3000:]}


class Bench:
    """One benchmark's result document: machine, load average at start and end, and its figures."""

    def __init__(self, name: str, device: str = "cpu", config: dict | None = None):
        self.name, self.t0 = name, time.time()
        self.result = {"benchmark": name, "machine": machine(device), "config": config or {},
                       "load_average_start": loadavg(), "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}

    def write(self, out_dir: Path | None = None) -> Path:
        self.result["load_average_end"] = loadavg()
        self.result["wall_seconds"] = round(time.time() - self.t0, 2)
        path = Path(out_dir or RESULTS) / f"{self.name}.json"
        write_json(path, self.result)
        return path


def common_args(ap, default_device: str = "cpu"):
    """--device, --dtype, --out, --no-wait: the options every benchmark takes."""
    ap.add_argument("--device", default=default_device, help="cpu or cuda (a GPU run: --device cuda --dtype bf16)")
    ap.add_argument("--dtype", default="fp32", choices=sorted(DTYPES),
                    help="the reference matmul's dtype; on CUDA sampling runs under bf16 autocast (models/id3.autocast)")
    ap.add_argument("--out", type=Path, default=RESULTS, help="folder for <name>.json")
    ap.add_argument("--no-wait", action="store_true", help="do not wait for an idle machine first")
    ap.add_argument("--max-load", type=float, default=0.7, help="the 1-minute load to wait for")
    return ap
