"""Named in ``VERL_USE_EXTERNAL_MODULES`` by CPU smoke runs: installs flash-attn's torch stand-in kernels in this
process (:func:`verl_vgpo.testing.flash_attn_standin.install`; nothing where the real flash-attn is installed)."""

from verl_vgpo.testing.flash_attn_standin import install

install()
