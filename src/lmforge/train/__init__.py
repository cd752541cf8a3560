"""Training stages: ``cpt`` (cpt.py), ``mlm`` (mlm.py), ``sft`` (sft.py, with chain.py, templates.py and
distill.py) and ``seq2seq`` (seq2seq.py), on the shared Trainer set-up in trainer.py and the fast path in fast.py."""
