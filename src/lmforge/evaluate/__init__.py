"""The ``eval`` stage: base vs tuned on held-out questions, metrics, tables and reports."""
