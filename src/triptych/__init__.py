"""triptych: PdCR, MATIC and M3-JEPA, working, on your own data and models."""

__version__ = "0.1.0"
