"""Everything of verl-vgpo that knows verl internals, kept apart from the pure core so that a verl
upgrade touches only this subpackage: shared TransferQueue / extra-info names (``keys``), the estimator
registration and focus hand-over (``estimator``), the focus-capturing engines (``engine``), the trainer
layer (``trainer``), the driver-side config check (``driver``) and version-bound workarounds (``compat``).
:mod:`verl_vgpo.plugin` installs them.

verl is imported here, before any module of the subpackage runs: ``import verl`` loads the plugin, which
imports ``trainer``; were ``trainer`` the first to import verl, the plugin would find it half-initialised
and fail to register it. Without verl installed (a GPU box timing the engine's ``FocusHook`` with plain
transformers) the verl-free parts still import.
"""

try:
    import verl  # noqa: F401
except ImportError:
    pass
