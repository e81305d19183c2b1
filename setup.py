"""Packaging for nnunet-qg.

`trainers/`, `dataset_conversion/` and `experiments/` live at the top of the repository but install as
`nnunet_qg.trainers`, `nnunet_qg.dataset_conversion` and `nnunet_qg.experiments`, so site-packages gets
no generic top-level names. A small `nnunet_qg_ext_trainer.pth` file registers our trainer folder in
nnU-Net's `nnUNet_extTrainer` variable at interpreter start (appending to a user's value). The commit of the
tree built is recorded in the package (nnunet_qg/source_commit.py), so benchmark rows name the code that ran.
"""
import os
import runpy

from setuptools import find_packages, setup
from setuptools.command.build_py import build_py

PTH_NAME = "nnunet_qg_ext_trainer.pth"
PTH_LINE = "import nnunet_qg.ext_trainer_path as _q; _q.register_ext_trainer_path()\n"


HERE = os.path.dirname(os.path.abspath(__file__))
SOURCE_COMMIT = runpy.run_path(os.path.join(HERE, "nnunet_qg", "source_commit.py"))


class build_py_with_pth(build_py):
    """Also place the .pth start-up hook at the root of the built package tree, and the commit of the tree built
    (where it is a git checkout) in the package."""

    def run(self):
        super().run()
        target = os.path.join(self.build_lib, PTH_NAME)
        with open(target, "w") as f:
            f.write(PTH_LINE)
        commit = SOURCE_COMMIT["git_commit"](HERE)
        recorded = self.recorded_commit_file()
        if commit:
            with open(recorded, "w") as f:
                f.write(commit + "\n")
        elif os.path.isfile(recorded):  # a stale build folder's
            os.remove(recorded)

    def recorded_commit_file(self) -> str:
        return os.path.join(self.build_lib, "nnunet_qg", SOURCE_COMMIT["RECORDED_FILE"])

    def get_outputs(self, include_bytecode=1):
        recorded = self.recorded_commit_file()
        return super().get_outputs(include_bytecode) + [os.path.join(self.build_lib, PTH_NAME)] + \
            ([recorded] if os.path.isfile(recorded) else [])


setup(
    name="nnunet-qg",
    version="0.1.0",
    description="Quality-guided semi-supervised learning (QG-SSL) for nnU-Net v2",
    long_description=open("README.md").read() if os.path.isfile("README.md") else "",
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=["nnunet_qg", "nnunet_qg.trainers", "nnunet_qg.dataset_conversion", "nnunet_qg.experiments"]
    + ["nnunet_qg." + p for p in find_packages("nnunet_qg")]
    + ["nnunet_qg.experiments." + p for p in find_packages("experiments")],
    package_dir={
        "nnunet_qg": "nnunet_qg",
        "nnunet_qg.trainers": "trainers",
        "nnunet_qg.dataset_conversion": "dataset_conversion",
        "nnunet_qg.experiments": "experiments",
    },
    # torch is deliberately not pinned: users install the build that fits their GPU first.
    install_requires=[
        "nnunetv2>=2.8,<2.9",
        "torch",
        "numpy",
        "SimpleITK",
        "batchgenerators",
        "acvl-utils",
        "blosc2",
        "tqdm",
        "matplotlib",
    ],
    extras_require={"conversion": ["h5py", "tifffile", "Pillow"],
                    "test": ["pytest", "h5py", "tifffile", "Pillow"]},
    cmdclass={"build_py": build_py_with_pth},
    entry_points={
        "console_scripts": [
            "nnUNetv2_preprocess_unlabeled=nnunet_qg.unlabeled.preprocess:entry_point",
            "nnUNetv2_convert_MSD_ssl=nnunet_qg.dataset_conversion.convert_msd_ssl:entry_point",
            "nnUNetv2_convert_PH2_ssl=nnunet_qg.dataset_conversion.convert_2d_ssl:ph2_entry_point",
            "nnUNetv2_convert_Kvasir_ssl=nnunet_qg.dataset_conversion.convert_2d_ssl:kvasir_entry_point",
            "nnUNetv2_convert_CVC_ssl=nnunet_qg.dataset_conversion.convert_2d_ssl:cvc_entry_point",
            "nnUNetv2_convert_LA_ssl=nnunet_qg.dataset_conversion.convert_la_ssl:entry_point",
            "nnUNetv2_convert_ACDC_ssl=nnunet_qg.dataset_conversion.convert_acdc_ssl:entry_point",
            "nnUNetv2_qg_make_phantom=nnunet_qg.phantom:entry_point",
            "nnUNetv2_qg_demo=nnunet_qg.demo:entry_point",
            "nnUNetv2_qg_export_teacher=nnunet_qg.export_teacher:entry_point",
            "nnUNetv2_qg_export=nnunet_qg.export_stock:entry_point",
            "nnUNetv2_qg_benchmark=nnunet_qg.benchmark.cli:entry_point",
            "nnUNetv2_predict_quality=nnunet_qg.quality_control.cli:entry_point",
            "nnUNetv2_qg_self_train=nnunet_qg.self_training:entry_point",
        ]
    },
)
