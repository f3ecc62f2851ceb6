"""dvqvae_ros: DVQ-VAE human grasp generation as a ROS 2 package (ament_python, pip-installable)."""
from glob import glob

from setuptools import find_packages, setup

PACKAGE = "dvqvae_ros"

setup(
    name=PACKAGE,
    version="0.1.0",
    # `training/` and `export/` install as dvqvae_training / dvqvae_export: the bare
    # names are generic (PyPI has an `export`) and would shadow or be shadowed.
    packages=(
        find_packages(include=["dvqvae_model", "dvqvae_model.*", "dvqvae_ros", "dvqvae_ros.*"])
        + [p.replace("training", "dvqvae_training", 1) for p in find_packages(include=["training", "training.*"])]
        + [p.replace("export", "dvqvae_export", 1) for p in find_packages(include=["export", "export.*"])]
    ),
    package_dir={"dvqvae_training": "training", "dvqvae_export": "export"},
    package_data={"dvqvae_model": ["assets/*", "assets/default_model/*", "assets/default_cvae/*"], "dvqvae_ros": ["fastdds_profile.xml"]},
    data_files=[
        ("share/ament_index/resource_index/packages", [f"resource/{PACKAGE}"]),
        (f"share/{PACKAGE}", ["package.xml"]),
        (f"share/{PACKAGE}/launch", glob("launch/*.launch.py")),
        (f"share/{PACKAGE}/config", glob("config/*.yaml")),
    ],
    python_requires=">=3.10",
    install_requires=[
        "numpy>=1.24",
        "scipy>=1.10",
        "torch>=2.1",
        "smplx>=0.1.28",
        "trimesh>=4.0",
        "safetensors>=0.4",
        "tqdm>=4.60",
        "matplotlib>=3.7",
    ],
    extras_require={
        "data": ["open3d>=0.18", "pybullet>=3.2.5", "scikit-learn>=1.3", "rtree>=1.0"],
        "viz": ["plotly>=5.0"],
        "onnx": ["onnx>=1.15", "onnxruntime>=1.17"],
        # Torch-TensorRT pairs with one torch minor release: 2.13.* needs torch 2.13 (requirements.txt); an open
        # bound resolves to a newer release that moves torch off its pin. README: the CUDA install command.
        "tensorrt": ["torch-tensorrt==2.13.*"],
        "dev": ["pytest>=7"],
    },
    zip_safe=True,
    maintainer="dvqvae_ros developers",
    maintainer_email="dvqvae-ros@users.noreply.github.com",
    description="Human grasp generation (DVQ-VAE) for object point clouds, served as a ROS 2 node.",
    license="Apache-2.0",
    tests_require=["pytest"],
    entry_points={
        "console_scripts": [
            "dvqvae-hand = dvqvae_model.hand.hand_cli:main",
            "dvqvae-grasp = dvqvae_ros.grasp_cli:main",
            "dvqvae-data = dvqvae_training.dataset.data_cli:main",
            "dvqvae-train = dvqvae_training.train.train_cli:main",
            "dvqvae-eval = dvqvae_training.evaluate.eval_cli:main",
            "dvqvae-export = dvqvae_export.cli:main",
            # ROS 2 executables (`ros2 run dvqvae_ros grasp_generator`; on a pip
            # install the same names land on PATH and take `--ros-args`).
            "grasp_generator = dvqvae_ros.grasp_node:main",
            "fake_depth_camera = dvqvae_ros.fake_camera_node:main",
            "object_segmenter = dvqvae_ros.segmenter_node:main",
        ],
    },
)
