"""The commit of the code that runs: a benchmark row records it, whatever folder the command is started from.

Standard library only: setup.py loads this file (runpy) at build time to record the commit of the tree it builds.
"""
import os
import subprocess
from os.path import abspath, dirname, isfile, join
from typing import Optional

# written into the built package by setup.py (build_py): the commit of the tree pip installed from
RECORDED_FILE = "_source_commit.txt"
PACKAGE_DIR = dirname(abspath(__file__))


def git_commit(folder: str) -> Optional[str]:
    """The short commit of the git checkout whose top level is `folder` ('-dirty' with uncommitted changes to tracked
    files); None where `folder` is not the top of a checkout (a folder inside some other repository does not count)."""
    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", folder, *args], capture_output=True, text=True, check=True).stdout.strip()
    try:
        if os.path.realpath(git("rev-parse", "--show-toplevel")) != os.path.realpath(folder):
            return None
        return git("rev-parse", "--short", "HEAD") + ("-dirty" if git("status", "--porcelain",
                                                                      "--untracked-files=no") else "")
    except (OSError, subprocess.CalledProcessError):
        return None


def source_commit() -> str:
    """The commit of the nnunet_qg code imported now: its checkout's where it runs from one (an editable install,
    the test suite), else the commit recorded when pip built the installed copy, else 'unknown'. Never the commit of
    the working directory, which may be any checkout."""
    commit = git_commit(dirname(PACKAGE_DIR))
    if commit is None and isfile(join(PACKAGE_DIR, RECORDED_FILE)):
        with open(join(PACKAGE_DIR, RECORDED_FILE)) as f:
            commit = f.read().strip() or None
    return commit or "unknown"
