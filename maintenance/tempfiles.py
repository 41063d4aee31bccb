"""Clean-up of old temporary files under configured directories.

Symbolic links are never followed: a link is an entry of its own, removed by age like a
file, and whatever it points to is never looked at. A file or directory that cannot be
read or removed is counted and reported, and the walk goes on.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from django.utils import timezone

logger = logging.getLogger(__name__)
MAX_ERRORS_REPORTED = 20


@dataclass
class TempCleanup:
    cutoff: float  # a POSIX timestamp: entries last modified before it go
    dry_run: bool
    scanned: int = 0
    deleted: int = 0
    bytes_freed: int = 0
    missing: list[str] = field(default_factory=list)
    errors: list[dict[str, str]] = field(default_factory=list)
    error_count: int = 0

    def error(self, path: str, exc: OSError) -> None:
        self.error_count += 1
        if len(self.errors) < MAX_ERRORS_REPORTED:
            self.errors.append({"path": path, "error": exc.strerror or str(exc)})


def cleanup_temp_files(
    directories: Iterable[str], max_age: dt.timedelta, *, dry_run: bool = False, now: dt.datetime | None = None
) -> dict[str, Any]:
    """Remove files (and links) older than max_age below each directory, recursively."""
    job = TempCleanup(cutoff=((now or timezone.now()) - max_age).timestamp(), dry_run=dry_run)
    dirs = list(directories)
    for directory in dirs:
        if not os.path.isdir(directory):
            job.missing.append(directory)
            continue
        for entry in _entries(directory, job):
            _consider(entry, job)
    if job.error_count:
        logger.warning("temp clean-up: %d entries could not be read or removed", job.error_count)
    return {
        "directories": dirs,
        "missing": job.missing,
        "scanned": job.scanned,
        "deleted": job.deleted,
        "bytes_freed": job.bytes_freed,
        "errors": job.error_count,
        "error_samples": job.errors,
        "dry_run": dry_run,
        "cutoff": dt.datetime.fromtimestamp(job.cutoff, dt.UTC).isoformat(),
    }


def _entries(top: str, job: TempCleanup) -> Iterator[os.DirEntry[str]]:
    """Every non-directory entry below top; directories are entered, links never."""
    pending = [top]
    while pending:
        path = pending.pop()
        try:
            with os.scandir(path) as listing:
                for entry in listing:
                    if entry.is_dir(follow_symlinks=False):
                        pending.append(entry.path)
                    else:
                        yield entry
        except OSError as exc:
            job.error(path, exc)


def _consider(entry: os.DirEntry[str], job: TempCleanup) -> None:
    job.scanned += 1
    try:
        stat = entry.stat(follow_symlinks=False)
        if stat.st_mtime >= job.cutoff:
            return
        if not job.dry_run:
            os.unlink(entry.path)
    except OSError as exc:
        job.error(entry.path, exc)
        return
    job.deleted += 1
    job.bytes_freed += stat.st_size
