from setuptools import find_packages, setup

setup(
    name="lseg-hpc",
    version="0.1.0",
    description="Training pipeline for LSeg (language-driven semantic segmentation) on SLURM clusters",
    packages=find_packages(include=["lseg", "lseg.*"]),
    python_requires=">=3.10",
    install_requires=[
        "torch>=2.6",  # torch.nn.utils.get_total_norm
        "torchvision",
        "timm>=1.0",
        "open_clip_torch>=2.24",
        "submitit>=1.5",
        "tensorboard>=2.14",
        "pyyaml>=6",
        "numpy",
        "pillow",
    ],
    extras_require={
        "test": ["pytest>=7", "selenium>=4.11"],  # selenium: the web demo's browser tests
        "app": ["gradio>=6", "gradio_client>=2"],  # the web demo, python -m lseg.app
    },
    package_data={"lseg.app": ["assets/*.jpg"],
                  "lseg.data": ["label_files/*.tsv"],  # ADE20K-150 class names and official prompts
                  # the zero-shot split and label files (read at run time from the installed package)
                  "lseg.zeroshot": ["packed/*/*.txt", "packed/*/*/*.txt", "packed/*/*/*.json.gz"]},
    entry_points={
        "console_scripts": [
            "lseg-train=lseg.train:main",
            "lseg-taxonomy=lseg.data.taxonomy:main",
            "lseg-app=lseg.app.__main__:main",
        ]
    },
)
