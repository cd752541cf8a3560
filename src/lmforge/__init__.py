"""lmforge: turn a base model and a pile of domain documents into a measured specialist."""

__version__ = "0.1.0"
