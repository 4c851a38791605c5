"""Offline training, export and evaluation of AE-XAD models."""

__version__ = "0.1.0"
