"""plugin.load: one failing registration neither hides itself nor blocks the others."""

import sys
import types

import pytest

import verl_vgpo.plugin as plugin


def test_a_failing_registration_does_not_block_the_rest(monkeypatch, caplog):
    calls = []

    def broken():
        raise ImportError("verl API changed")

    part = types.ModuleType("fake_vgpo_part")
    part.broken = broken
    part.fine = lambda: calls.append("fine")
    monkeypatch.setitem(sys.modules, "fake_vgpo_part", part)
    monkeypatch.setattr(plugin, "REGISTRATIONS", [("fake_vgpo_part", "broken"), ("fake_vgpo_part", "fine")])
    monkeypatch.setattr(plugin, "STATUS", {})  # the real record stays as the real load left it
    with pytest.raises(RuntimeError, match="fake_vgpo_part.broken: ImportError"):
        plugin.load()
    assert calls == ["fine"]
    assert plugin.STATUS["fake_vgpo_part.fine"] == "ok"
    assert plugin.STATUS["fake_vgpo_part.broken"].startswith("failed: ImportError")
    assert "verl-vgpo: fake_vgpo_part.broken failed" in caplog.text
