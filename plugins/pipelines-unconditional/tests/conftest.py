"""Puts this folder on ``sys.path`` so tests can import :mod:`unconditional_helpers`.

The workspace runs pytest with ``--import-mode=importlib``, where test folders are not importable.
"""

from __future__ import annotations

import sys
from pathlib import Path

_HERE = str(Path(__file__).parent)
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)
