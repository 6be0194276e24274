"""OSKT: one-shot knowledge transfer for scalable person re-identification."""

__version__ = "0.1.0"
