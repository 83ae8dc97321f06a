"""verl-vgpo: Visually-Guided Policy Optimization (VGPO) as a verl plugin."""

from setuptools import find_packages, setup

setup(
    name="verl-vgpo",
    version="0.1.0",
    description="VGPO (Visually-Guided Policy Optimization) as a selectable advantage estimator for verl",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["verl_vgpo", "verl_vgpo.*"]),
    # the CPU run script (examples/run_vgpo_tiny_cpu.sh links to it) ships with the package for vgpo-demo
    package_data={"verl_vgpo.apps": ["run_vgpo_tiny_cpu.sh"]},
    install_requires=[
        "verl[verl-core]>=0.9.1,<0.10",
        "torch>=2.6",
        "transformers>=5.5.3,<5.11",  # verl 0.9.1's own range; the compat fixes are for transformers 5
        "omegaconf>=2.3",
        "mathruler",  # boxed-answer grading of the math reward and the evaluation CLI
        # Look-Back's scoring rule (vgpo-evaluate --scoring lookback); the antlr4 4.9.3 parser runtime is
        # the one omegaconf/hydra already pin
        "math-verify[antlr4_9_3]",
        # the console scripts: plots (vgpo-demo, vgpo-experiment, vgpo-analyze) and the offline shapes data
        # set of the demo, the experiment and `vgpo-tiny-vlm --warm-start`
        "matplotlib",
        "easy-vqa>=1.0",
    ],
    extras_require={
        # GPU-only pieces: never installed on CPU machines or in CI.
        "gpu": ["vllm", "flash-attn"],
        "test": ["pytest>=8", "hypothesis>=6", "pandas", "pyarrow"],
    },
    entry_points={
        # `import verl` imports every entry point of this group in every process (Ray workers included).
        "verl.plugins": ["vgpo = verl_vgpo.plugin"],
        "console_scripts": [
            "vgpo-demo = verl_vgpo.apps.demo:main",
            "vgpo-tiny-vlm = verl_vgpo.cpu.tiny_vlm_cli:main",
            "vgpo-evaluate = verl_vgpo.apps.evaluate:main",
            "vgpo-analyze = verl_vgpo.apps.analyze:main",
            "vgpo-experiment = verl_vgpo.apps.experiment:main",
            "vgpo-doctor = verl_vgpo.apps.doctor:main",
        ],
    },
)
