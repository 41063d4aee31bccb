"""Samples of this host: memory, disk and CPU use, through psutil."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import psutil


@dataclass(frozen=True)
class HostSample:
    memory_percent: float
    disk_percent: float
    cpu_percent: float

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


def sample_host(disk_path: str, cpu_interval: float = 1.0) -> HostSample:
    return HostSample(
        memory_percent=psutil.virtual_memory().percent,
        disk_percent=psutil.disk_usage(disk_path).percent,
        cpu_percent=psutil.cpu_percent(interval=cpu_interval),
    )
