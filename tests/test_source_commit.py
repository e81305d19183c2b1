"""The commit a benchmark row records is the commit of the code that ran, wherever the command starts."""
import os
import subprocess
import sys
import zipfile
from glob import glob
from os.path import dirname, join

import pytest

from nnunet_qg.source_commit import RECORDED_FILE, git_commit

REPO = dirname(dirname(os.path.abspath(__file__)))


def _head(folder: str) -> str:
    return subprocess.run(["git", "-C", folder, "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                          check=True).stdout.strip()


def _checkout_or_skip() -> str:
    commit = git_commit(REPO)
    if commit is None:
        pytest.skip(f"{REPO} is not a git checkout (an unpacked source archive): no commit to record")
    return commit


def test_git_commit_only_at_the_top_of_a_checkout(tmp_path):
    """The checkout's own commit at its top; None in a folder inside it (the package installed in a virtual
    environment inside some repository must not take that repository's commit) and outside any checkout."""
    commit = _checkout_or_skip()
    assert commit.split("-")[0] == _head(REPO)
    assert git_commit(join(REPO, "tests")) is None
    assert git_commit(str(tmp_path)) is None


def test_built_package_records_the_commit_it_was_built_from(tmp_path):
    """pip's build writes the tree's commit into the package: the installed copy has no .git to ask, and the
    working directory of a benchmark may be any folder (rows of 'unknown', docs/history.md)."""
    commit = _checkout_or_skip()
    pytest.importorskip("setuptools", reason="the build without isolation needs setuptools in this environment")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w",
                    str(tmp_path), REPO], check=True, capture_output=True)
    (wheel,) = glob(join(tmp_path, "nnunet_qg-*.whl"))
    with zipfile.ZipFile(wheel) as z:
        assert z.read(f"nnunet_qg/{RECORDED_FILE}").decode().strip() == commit


def test_installed_copy_names_its_commit_from_any_folder(tmp_path):
    """Started from a folder that is no checkout, source_commit() still names a commit (the recorded one for an
    installed copy, the checkout's for one run from the tree)."""
    _checkout_or_skip()
    out = subprocess.run([sys.executable, "-c", "from nnunet_qg.source_commit import source_commit; "
                          "print(source_commit())"], cwd=tmp_path, capture_output=True, text=True, check=True)
    commit = out.stdout.strip()
    assert commit != "unknown" and all(c in "0123456789abcdef" for c in commit.split("-")[0]), commit
