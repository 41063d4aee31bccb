"""cleanup_temp_files on a real tree: old files go, links are never followed, errors are counted."""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import tempfile
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from maintenance.tempfiles import cleanup_temp_files

DAY = dt.timedelta(days=1)
NOBODY = 65534


def age(path: Path, days: float) -> None:
    when = (dt.datetime.now(dt.UTC) - dt.timedelta(days=days)).timestamp()
    os.utime(path, (when, when), follow_symlinks=False)


@pytest.fixture
def tree() -> Iterator[Path]:
    """A world-writable top so an unprivileged child can work in it; removed afterwards."""
    top = Path(tempfile.mkdtemp(prefix="bk-tmp-"))
    top.chmod(0o777)
    yield top
    for path in top.rglob("*"):
        if path.is_dir() and not path.is_symlink():
            path.chmod(0o755)
    shutil.rmtree(top)


def build(top: Path) -> dict[str, Path]:
    outside = top / "outside"
    outside.mkdir()
    (outside / "precious.txt").write_text("must survive")
    age(outside / "precious.txt", 30)
    work = top / "work"
    (work / "sub" / "deeper").mkdir(parents=True)
    paths = {
        "old": work / "old.txt",
        "new": work / "new.txt",
        "deep_old": work / "sub" / "deeper" / "old.log",
        "link_to_outside_dir": work / "outside-dir",
        "link_to_outside_file": work / "sub" / "outside-file",
        "precious": outside / "precious.txt",
    }
    for key in ("old", "new", "deep_old"):
        paths[key].write_text(key * 100)
    paths["link_to_outside_dir"].symlink_to(outside, target_is_directory=True)
    paths["link_to_outside_file"].symlink_to(paths["precious"])
    for key in ("old", "deep_old", "link_to_outside_dir", "link_to_outside_file"):
        age(paths[key], 3)
    return paths


def test_it_deletes_old_files_recursively_and_never_follows_links_out(tree: Path) -> None:
    paths = build(tree)
    report = cleanup_temp_files([str(tree / "work")], DAY)
    assert not paths["old"].exists() and not paths["deep_old"].exists()
    assert paths["new"].exists()
    assert not os.path.lexists(paths["link_to_outside_dir"])  # the old link itself goes
    assert paths["precious"].read_text() == "must survive"  # what it pointed at stays
    assert (report["deleted"], report["scanned"], report["errors"]) == (4, 5, 0)
    assert report["bytes_freed"] >= 300 + 800


def test_it_only_reports_in_a_dry_run(tree: Path) -> None:
    paths = build(tree)
    report = cleanup_temp_files([str(tree / "work")], DAY, dry_run=True)
    assert report["deleted"] == 4 and report["dry_run"] is True
    assert all(os.path.lexists(p) for p in paths.values())


def test_it_reports_a_missing_directory_without_failing(tree: Path) -> None:
    report = cleanup_temp_files([str(tree / "nope")], DAY)
    assert report["missing"] == [str(tree / "nope")]
    assert report["errors"] == 0


def test_it_counts_permission_errors_and_goes_on(tree: Path) -> None:
    work = tree / "work"
    for name in ("locked", "readonly", "open"):
        (work / name).mkdir(parents=True)
        (work / name / "old.txt").write_text("x")
        age(work / name / "old.txt", 3)
    (work / "open").chmod(0o777)
    (work / "locked").chmod(0o000)  # cannot be listed
    (work / "readonly").chmod(0o555)  # cannot be removed from
    report = as_unprivileged_user(lambda: cleanup_temp_files([str(work)], DAY))
    assert report["errors"] == 2
    failed = {Path(e["path"]).relative_to(work).parts[0] for e in report["error_samples"]}
    assert failed == {"locked", "readonly"}
    assert all(e["error"] == "Permission denied" for e in report["error_samples"])
    assert not (work / "open" / "old.txt").exists()  # the walk went on past the errors
    assert (work / "readonly" / "old.txt").exists()


def as_unprivileged_user(job: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """Run job in a child that has dropped root (root ignores file permissions)."""
    if os.geteuid() != 0:
        return job()
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: it always ends here, never running the rest of pytest
        code = 1
        try:
            os.close(read_end)
            try:
                os.setgid(NOBODY)
                os.setuid(NOBODY)
                outcome: dict[str, Any] = {"result": job()}
            except BaseException:  # noqa: BLE001  (handed to the parent, which raises it)
                outcome = {"error": traceback.format_exc()}
            with os.fdopen(write_end, "w") as pipe:
                pipe.write(json.dumps(outcome))
            code = 0 if "result" in outcome else 1
        finally:
            os._exit(code)
    os.close(write_end)
    with os.fdopen(read_end) as pipe:
        written = pipe.read()
    status = os.waitpid(pid, 0)[1]
    outcome = json.loads(written) if written else {"error": "the child wrote nothing"}
    assert "error" not in outcome and status == 0, f"the unprivileged child failed ({status}):\n{outcome.get('error')}"
    result: dict[str, Any] = outcome["result"]  # the child wrote job()'s dict
    return result
