"""verl-vgpo: Visually-Guided Policy Optimization (arXiv 2604.09349) for verl.

The pure algorithm is at this level (:mod:`~verl_vgpo.config`, :mod:`~verl_vgpo.focus`,
:mod:`~verl_vgpo.advantage`, :mod:`~verl_vgpo.reference`; torch only, no verl or ray import). The verl
wiring in :mod:`verl_vgpo.wiring` and the CPU support in :mod:`verl_vgpo.cpu` are installed by
:mod:`verl_vgpo.plugin`, which verl imports through its ``verl.plugins`` entry point in every process.
:mod:`verl_vgpo.apps` holds the console scripts.
"""

__version__ = "0.1.0"
