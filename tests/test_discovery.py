"""nnU-Net's stock trainer lookup finds our classes through nnUNet_extTrainer, with no manual export."""
import json
import os
import subprocess
import sys
import textwrap

import nnunetv2

from conftest import run_cli


def _python(code: str, env: dict) -> str:
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          check=True).stdout.strip().splitlines()[-1]


def test_ext_trainer_variable_is_set_without_export():
    env = {k: v for k, v in os.environ.items() if k != "nnUNet_extTrainer"}
    value = _python("import os; print(os.environ['nnUNet_extTrainer'])", env)
    assert value.endswith(os.path.join("nnunet_qg", "_ext_trainers"))


def test_ext_trainer_variable_appends_to_user_value(tmp_path):
    env = {**os.environ, "nnUNet_extTrainer": str(tmp_path)}
    value = _python("import os; print(os.environ['nnUNet_extTrainer'])", env)
    parts = value.split(os.pathsep)
    assert parts[0] == str(tmp_path)
    assert parts[-1].endswith(os.path.join("nnunet_qg", "_ext_trainers"))
    assert len(parts) == 2


def test_stock_lookup_returns_the_same_class_object():
    code = (
        "import json, sys\n"
        "from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name as find\n"
        "import nnunet_qg\n"
        "out = {}\n"
        "for name in ('nnUNetTrainerSSL', 'nnUNetTrainerSSL_debug'):\n"
        "    cls = find(name)\n"
        "    out[name] = [cls is getattr(nnunet_qg, name), cls.__module__]\n"
        "copies = [m for m, mod in sys.modules.items() if mod is not None and m != cls.__module__\n"
        "          and getattr(mod, '__file__', None) and mod.__file__.endswith('nnUNetTrainerSSL.py')\n"
        "          and m != 'nnunet_qg.trainers.nnUNetTrainerSSL']\n"
        "out['copies'] = copies\n"
        "print(json.dumps(out))\n")
    env = {k: v for k, v in os.environ.items() if k != "nnUNet_extTrainer"}
    result = json.loads(_python(code, env))
    assert result["nnUNetTrainerSSL"] == [True, "nnunet_qg.trainers.nnUNetTrainerSSL"]
    assert result["nnUNetTrainerSSL_debug"][0] is True
    assert result["copies"] == []


def test_research_trainers_are_found_but_not_shipped():
    """The research trainers (nnunet_qg.experiments) are found by name, as the benchmarks that train them need;
    the shipped trainers and quality control never import that package."""
    code = textwrap.dedent("""
        import json, sys
        import nnunet_qg.trainers, nnunet_qg.quality_control.cli
        imported = sorted(m for m in sys.modules if m.startswith('nnunet_qg.experiments'))
        from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name as find
        from nnunet_qg.experiments import trainers as experiments
        names = ('nnUNetTrainerQGDrift_debug', 'nnUNetTrainerQGWarmup_debug2gSteps')
        found = {n: [find(n) is getattr(experiments, n), n in nnunet_qg.trainers.__all__] for n in names}
        print(json.dumps({'imported': imported, 'found': found}))
        """)
    result = json.loads(_python(code, {k: v for k, v in os.environ.items() if k != "nnUNet_extTrainer"}))
    assert result["imported"] == []
    assert result["found"] == {"nnUNetTrainerQGDrift_debug": [True, False],
                               "nnUNetTrainerQGWarmup_debug2gSteps": [True, False]}


def test_nothing_written_into_nnunetv2():
    root = nnunetv2.__path__[0]
    for folder, _, files in os.walk(root):
        for f in files:
            if f.endswith(".py"):
                assert "nnunet_qg" not in open(os.path.join(folder, f), errors="ignore").read(), f


def test_nnunetv2_train_finds_trainer_by_name(tmp_path):
    """The real console script resolves the name (it then stops: dataset 999 does not exist)."""
    env = {k: v for k, v in os.environ.items() if k != "nnUNet_extTrainer"}
    env.update(nnUNet_raw=str(tmp_path), nnUNet_preprocessed=str(tmp_path), nnUNet_results=str(tmp_path))
    proc = run_cli(["nnUNetv2_train", "999", "3d_fullres", "0", "-tr", "nnUNetTrainerSSL", "-device", "cpu"],
                   env, check=False)
    assert proc.returncode != 0
    assert "Using trainer 'nnUNetTrainerSSL' from:" in proc.stdout
    assert "Could not find requested nnunet trainer" not in proc.stdout + proc.stderr
    # control: an unknown name is reported by the same lookup
    proc = run_cli(["nnUNetv2_train", "999", "3d_fullres", "0", "-tr", "nnUNetTrainerSSL_nope", "-device", "cpu"],
                   env, check=False)
    assert "Could not find requested nnunet trainer" in proc.stdout + proc.stderr
