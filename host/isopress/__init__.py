"""isopress: pressure control and records for solid-state battery cell holders."""

__version__ = "0.1.0"
