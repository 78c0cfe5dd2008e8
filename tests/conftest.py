"""Shared test helpers, importable by name from every test layer:
`chartlib` (render the chart with the real helm) and `fake_arm` (a local
HTTPS server answering like the Azure REST APIs)."""

import sys
from pathlib import Path

_HERE = Path(__file__).resolve().parent
for _sub in ("chart", "unit/azure"):
    _path = str(_HERE / _sub)
    if _path not in sys.path:
        sys.path.insert(0, _path)
