"""The machine a benchmark ran on, recorded in every results file."""

from __future__ import annotations

import os
import platform
from pathlib import Path


def machine() -> dict:
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"host": platform.node(), "cpu": cpu, "cores": os.cpu_count(),
            "torch": torch.__version__, "threads": torch.get_num_threads(),
            "cuda": torch.cuda.is_available(),
            # other work on the machine slows torch badly (threads oversubscribed): say so
            "loadavg_1min_at_start": round(os.getloadavg()[0], 2)}


def results_path(benchmark: str, m: dict) -> Path:
    """benchmarks/results/<benchmark>-<host>-<cores>cpu.json: one file per machine; a machine
    of the same name with an AMD CPU gets -amd (the Intel runs keep the older names)."""
    vendor = "-amd" if "AMD" in str(m.get("cpu", "")) else ""
    return Path(__file__).parent / "results" / f"{benchmark}-{m['host'] or 'unknown'}-" \
        f"{m['cores']}cpu{vendor}.json"


def write_results(benchmark: str, report: dict) -> Path:
    """Write the full report, and print it without its 'detail' as the last stdout line."""
    import json

    path = results_path(benchmark, report["machine"])
    from emosteer.files import write_text

    write_text(path, json.dumps(report, indent=2) + "\n")
    print(json.dumps({k: v for k, v in report.items() if k != "detail"}))
    return path
