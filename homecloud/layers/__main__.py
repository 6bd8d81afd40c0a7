"""Write group_data/all.py from the layer schemas: `python -m homecloud.layers`."""

from . import DEFAULTS_FILE, render_group_data

DEFAULTS_FILE.write_text(render_group_data(), encoding="utf-8")
print(f"wrote {DEFAULTS_FILE}")
