"""The table `make bench` prints: the machine, the settings, and each figure against its goal."""

from __future__ import annotations

import os
import platform
import resource
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path


@dataclass(frozen=True, slots=True)
class Figure:
    section: str
    name: str
    value: str
    goal: str = ""
    passed: bool | None = None  # None: a figure for context, with no goal of its own

    @property
    def verdict(self) -> str:
        return "" if self.passed is None else ("pass" if self.passed else "**miss**")


def _machine_cpu_seconds() -> float:
    """CPU time the whole machine has spent in user and system mode (all CPUs, since boot)."""
    user, nice, system = (int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:4])
    return (user + nice + system) / os.sysconf("SC_CLK_TCK")


def _process_cpu_seconds(pid: int, children: bool) -> float:
    """utime + stime (+ cutime + cstime: the children it has reaped), from /proc/PID/stat."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    ticks = sum(int(v) for v in fields[11:15 if children else 13])
    return ticks / os.sysconf("SC_CLK_TCK")


def _children(pid: int) -> list[int]:
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


class OtherLoad:
    """How much CPU processes outside this run used while it ran, in CPUs (0 on an idle machine).

    Ours is this process, every process it started and reaped (servers with their workers, load
    generators) and the PostgreSQL it started (not our child: pg_ctl daemonizes it). Anything else
    running (a test suite, a build) takes cores from the servers under test, which interleaved
    rounds cannot cancel, so the table states it.
    """

    def __init__(self, postgres_pid: int | None) -> None:
        self._postgres_pid = postgres_pid
        self._start = self._sample()

    def _ours(self) -> float:
        own = sum(resource.getrusage(who).ru_utime + resource.getrusage(who).ru_stime
                  for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))
        if self._postgres_pid:
            own += _process_cpu_seconds(self._postgres_pid, children=True)
            own += sum(_process_cpu_seconds(c, children=False) for c in _children(self._postgres_pid))
        return own

    def _sample(self) -> tuple[float, float, float]:
        return time.monotonic(), _machine_cpu_seconds(), self._ours()

    def cpus(self) -> float:
        """Average CPUs busy with other work since construction. Call before PostgreSQL stops."""
        (t0, machine0, ours0), (t1, machine1, ours1) = self._start, self._sample()
        return max(0.0, ((machine1 - machine0) - (ours1 - ours0)) / max(1e-9, t1 - t0))


def busy_cpus(seconds: float = 2.0) -> float:
    """CPUs' worth of work the machine does over `seconds` while we do nothing: near 0 when idle."""
    t0, m0 = time.monotonic(), _machine_cpu_seconds()
    time.sleep(seconds)
    return (_machine_cpu_seconds() - m0) / (time.monotonic() - t0)


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "?"


def machine(extra: dict[str, str]) -> list[str]:
    """One line each for the date, the machine and the software, ready to quote."""
    software = {
        "Python": platform.python_version(),
        "grpcio": _version("grpcio"),
        "uvloop": _version("uvloop"),
        "asyncpg": _version("asyncpg"),
        "protobuf": _version("protobuf"),
    } | extra
    return [
        f"- date: {datetime.now(UTC):%Y-%m-%d %H:%M} UTC",
        f"- machine: {os.cpu_count()} CPUs (nproc), {cpu_model()}, Linux {platform.release()}",
        "- software: " + ", ".join(f"{name} {version}" for name, version in software.items()),
    ]


def render(title: str, header: list[str], figures: list[Figure], notes: list[str]) -> str:
    lines = [f"## {title}", "", *header, "", "| | figure | value | goal | result |", "|---|---|---:|---|---|"]
    for figure in figures:
        lines.append(f"| {figure.section} | {figure.name} | {figure.value} | {figure.goal} | {figure.verdict} |")
    if notes:
        lines += ["", *notes]
    return "\n".join(lines)


def progress(message: str) -> None:
    """Progress goes to stderr, so stdout carries nothing but the table."""
    print(message, file=sys.stderr, flush=True)
