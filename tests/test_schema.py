"""
The layer schemas (homecloud/layers/<layer>.py): every key declared once, group_data/all.py
generated from them, settings built from a host's data with the schema's defaults only.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from homecloud import layers
from homecloud.model import DATA_KINDS, load_defaults
from homecloud.schema import GROUPS, kind_problem, thawed

REPO = Path(__file__).resolve().parent.parent


def test_group_data_all_is_generated_from_the_schemas():
    """Defaults and doc comments: group_data/all.py is exactly what the schemas render."""
    assert (REPO / "group_data" / "all.py").read_text() == layers.render_group_data(), (
        "group_data/all.py drifted from homecloud/layers/*.py: run `python -m homecloud.layers`"
    )


def test_the_rendered_file_holds_the_schema_defaults():
    assert load_defaults() == layers.defaults()


def test_every_key_is_declared_once_with_a_default_it_fits():
    names = [key.name for layer in layers.LAYERS for key in layer.keys]
    assert sorted({n for n in names if names.count(n) > 1}) == []
    for name, key in layers.KEYS.items():
        assert kind_problem(name, key.default, key.kind) is None, name
        assert key.groups and set(key.groups) <= set(GROUPS), name
        assert DATA_KINDS[name] is key.kind


def test_every_key_a_layer_reads_is_declared():
    for layer in layers.LAYERS:
        assert set(layer.reads) <= set(layers.KEYS), layer.name


@pytest.mark.parametrize("layer", [l.name for l in layers.LAYERS])
def test_settings_take_the_schema_defaults_and_are_frozen(layer):
    settings = layers.settings_of(layer, {})
    for field in dataclasses.fields(settings):
        default = layers.KEYS[field.name].default
        assert thawed(getattr(settings, field.name)) == default, field.name
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(settings, dataclasses.fields(settings)[0].name, None)


def test_settings_read_the_host_data_over_the_defaults():
    settings = layers.settings_of("dnas", {"dnas_path": "/data"})
    assert settings.dnas_path == "/data"
    assert settings.dnas_mount_options == "defaults,noatime"  # the schema's default, nothing else
    with pytest.raises(TypeError):
        settings.syncthing_folders[0]["path"] = "elsewhere"  # entries are read-only too
    samba = layers.settings_of("samba", {"dnas_path": "/data", "samba_enabled": False})
    assert (samba.dnas_path, samba.samba_enabled) == ("/data", False)  # a key of dnas, read by samba
