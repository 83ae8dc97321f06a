"""verl-vgpo: Visually-Guided Policy Optimization (arXiv 2604.09349) for verl.

The pure algorithm lives in :mod:`verl_vgpo.config`, :mod:`verl_vgpo.focus` and
:mod:`verl_vgpo.advantage` (torch only, no Ray, no verl state). The verl wiring (estimator registry,
engine, trainer, CPU platform) is installed by :mod:`verl_vgpo.plugin`, which verl imports through its
``verl.plugins`` entry point.
"""

__version__ = "0.1.0"
