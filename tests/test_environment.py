"""What a run records of its environment, read without side effects."""

import os
import shutil
import subprocess

import pytest

from harness.results.environment import git_commit


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
def test_reading_the_commit_writes_nothing_into_the_checkout(tmp_path):
    """``git status`` refreshes and rewrites the index (through .git/index.lock) when a file's stat changed: a
    run must not, since it may race the user's own git in that checkout."""
    git = ["git", "-C", str(tmp_path), "-c", "user.email=t@t", "-c", "user.name=t"]
    subprocess.run([*git, "init", "-q"], check=True)
    (tmp_path / "f").write_text("a")
    subprocess.run([*git, "add", "f"], check=True)
    subprocess.run([*git, "commit", "-qm", "x"], check=True)
    head = subprocess.run([*git, "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
    stat = (tmp_path / "f").stat()
    os.utime(tmp_path / "f", ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # same content, another mtime
    index = tmp_path / ".git" / "index"
    before = index.stat()
    assert git_commit(tmp_path) == head
    assert (index.stat().st_ino, index.stat().st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    (tmp_path / "f").write_text("b")
    assert git_commit(tmp_path) == head + "-dirty"
