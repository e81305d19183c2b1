"""Every console script of setup.py answers -h with its help and exit status 0 (a bare % in a help
string once made four converters crash on -h). The list is read from setup.py itself, so a new command
is covered the day it is added."""
import ast

import pytest

from conftest import REPO, nnunet_env, run_cli


def console_scripts() -> list:
    """Command names of setup.py's entry_points['console_scripts']."""
    tree = ast.parse((REPO / "setup.py").read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "setup":
            entry_points = next(k.value for k in node.keywords if k.arg == "entry_points")
            return [line.split("=")[0].strip() for line in ast.literal_eval(entry_points)["console_scripts"]]
    raise AssertionError("no setup() call in setup.py")


def test_setup_py_lists_the_commands():
    assert len(console_scripts()) >= 12 and "nnUNetv2_convert_CVC_ssl" in console_scripts()


@pytest.mark.parametrize("command", console_scripts())
def test_help(tmp_path, command):
    proc = run_cli([command, "-h"], nnunet_env(tmp_path), check=False)
    assert proc.returncode == 0, f"{command} -h exited {proc.returncode}:\n{proc.stderr[-3000:]}"
    assert proc.stdout.startswith("usage:") and "Traceback" not in proc.stderr, proc.stderr[-3000:]
