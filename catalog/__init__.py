"""dsaudit's library: a catalog of image datasets in SQL, and the audits that run on it.

Every command-line feature is also a Python call; see the README's "Python API" section.
"""

from __future__ import annotations

__version__ = "0.1.0"
