"""The ``data`` stage: documents and datasets in, canonical records and splits out."""
