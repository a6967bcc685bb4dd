"""Helpers shared by the benchmark scripts: process memory from /proc, machine description, table rendering.

Nothing here imports torch, so a memory-measuring child process can check /proc before torch is loaded.
"""

from __future__ import annotations

import os
import platform
import statistics
import subprocess
import sys
from collections.abc import Sequence

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_SRC = os.path.join(ROOT, "src")
if os.path.isdir(os.path.join(_SRC, "involution")) and _SRC not in sys.path:
    sys.path.insert(0, _SRC)  # benchmark the working tree, installed or not

# ------------------------------------------------------------------------------------------------- memory
_STATUS = "/proc/self/status"
_CLEAR_REFS = "/proc/self/clear_refs"


def proc_status_kib(*keys: str) -> dict[str, int]:
    """The ``Vm*`` fields of /proc/self/status named in ``keys``, in KiB (missing fields are left out)."""
    out: dict[str, int] = {}
    try:
        with open(_STATUS) as f:
            for line in f:
                name, _, rest = line.partition(":")
                if name in keys:
                    out[name] = int(rest.split()[0])
    except OSError:
        pass
    return out


def reset_peak_rss() -> None:
    """Reset this process's RSS high-water mark (VmHWM) to its current RSS (Linux >= 4.0; see hwm_reset_works)."""
    try:
        with open(_CLEAR_REFS, "w") as f:
            f.write("5")
    except OSError:
        pass


def hwm_reset_works() -> bool:
    """Whether :func:`reset_peak_rss` really resets VmHWM here: touch and free 32 MiB, reset, check VmHWM fell.

    Checked rather than assumed (containers may refuse the write). Other threads may move RSS by a few pages in
    between, so the check allows 8 MiB of slack rather than demanding VmHWM == VmRSS.
    """
    buf = b"\x01" * (32 << 20)  # written, so resident
    del buf
    before = proc_status_kib("VmHWM", "VmRSS")
    if "VmHWM" not in before or before["VmHWM"] - before["VmRSS"] < (16 << 10):
        return False  # the 32 MiB did not show up in VmHWM (or was not freed): cannot tell
    reset_peak_rss()
    after = proc_status_kib("VmHWM", "VmRSS")
    return after["VmHWM"] - after["VmRSS"] < (8 << 10)


def peak_rss_supported() -> bool:
    """Whether /proc gives VmHWM at all (Linux)."""
    return "VmHWM" in proc_status_kib("VmHWM")


# ---------------------------------------------------------------------------------------- machine description
def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (falls back to platform.processor())."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def cpu_precision_flags() -> str:
    """The CPU's flags that decide low-precision speed (/proc/cpuinfo): bfloat16 and AMX, or 'none of ...'."""
    wanted = ("avx512_bf16", "amx_bf16", "amx_tile", "amx_int8", "avx512_fp16", "avx512f", "avx2")
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
    except OSError:
        flags = []
    have = [w for w in wanted if w in flags]
    return " ".join(have) + ("" if {"avx512_bf16", "amx_bf16"} & set(have) else " (no native bfloat16)")


def usable_cpus() -> int:
    """CPUs this process may run on (its affinity mask), else os.cpu_count()."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def load_average() -> str:
    """The 1/5/15-minute load averages from /proc/loadavg ('' if unknown): a busy machine makes noisy timings."""
    try:
        with open("/proc/loadavg") as f:
            return " ".join(f.read().split()[:3])
    except OSError:
        return ""


def git_revision(root: str) -> str:
    """``<short sha>`` of ``root``'s checkout, with ``+dirty`` when tracked files under src/ differ; '' if unknown.

    Read-only: GIT_OPTIONAL_LOCKS=0 keeps ``git status`` from refreshing the index.
    """
    env = dict(os.environ, GIT_OPTIONAL_LOCKS="0")
    try:
        sha = subprocess.run(
            ["git", "-C", root, "rev-parse", "--short", "HEAD"], capture_output=True, text=True, env=env, timeout=10
        )
        if sha.returncode != 0:
            return ""
        dirty = subprocess.run(
            ["git", "-C", root, "status", "--porcelain", "--untracked-files=no", "--", "src"],
            capture_output=True,
            text=True,
            env=env,
            timeout=10,
        )
        return sha.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return ""


# ------------------------------------------------------------------------------------------------ statistics
def median(xs: Sequence[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def rel_iqr(xs: Sequence[float]) -> float:
    """Interquartile range over the median (a noise indicator); nan with fewer than 3 samples."""
    if len(xs) < 3:
        return float("nan")
    q1, _, q3 = statistics.quantiles(xs, n=4, method="inclusive")
    m = statistics.median(xs)
    return (q3 - q1) / m if m > 0 else float("nan")


# ---------------------------------------------------------------------------------------------------- tables
def render_table(headers: Sequence[str], rows: Sequence[Sequence[str]], markdown: bool, right: Sequence[bool]) -> str:
    """A table as GitHub markdown or as aligned plain text. ``right[i]``: right-align column i (numbers)."""
    if markdown:
        sep = ["---:" if r else ":---" for r in right]
        lines = ["| " + " | ".join(headers) + " |", "| " + " | ".join(sep) + " |"]
        lines += ["| " + " | ".join(row) + " |" for row in rows]
        return "\n".join(lines)
    widths = [max(len(h), *(len(row[i]) for row in rows)) if rows else len(h) for i, h in enumerate(headers)]

    def fmt(cells: Sequence[str]) -> str:
        return "  ".join(c.rjust(w) if r else c.ljust(w) for c, w, r in zip(cells, widths, right)).rstrip()

    lines = [fmt(headers), "  ".join("-" * w for w in widths)]
    lines += [fmt(row) for row in rows]
    return "\n".join(lines)


def fmt_num(x: float | None, digits: int = 2) -> str:
    """A number for a table: '–' for missing/nan, fewer decimals for big values."""
    if x is None or x != x:
        return "–"
    if abs(x) >= 1000:
        return f"{x:.0f}"
    if abs(x) >= 100:
        return f"{x:.1f}" if digits > 1 else f"{x:.0f}"
    return f"{x:.{digits}f}"


def write_markdown(path: str, md: str) -> None:
    """``md`` to the file ``path``, or to stdout when ``path`` is "-" (the scripts' ``--markdown`` option)."""
    if path == "-":
        print("\n" + md)
        return
    with open(path, "w") as fh:
        fh.write(md)
