"""Retrieval: chunk the prepared documents, index them (dense + BM25), retrieve, and build RAFT data.

The ``index`` stage (:mod:`lmforge.rag.stage`) writes everything later stages need as files in
``runs/<run>/index/``: the store, ``retrieved/<split>.jsonl`` for the eval sets and, when asked,
the ``raft`` training split. Nothing outside this package imports it except ``pipeline.py`` and
``cli.py``.
"""
