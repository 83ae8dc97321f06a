"""Test support that runs inside verl's own processes (e.g. the flash-attn stand-in of CPU smoke runs)."""
