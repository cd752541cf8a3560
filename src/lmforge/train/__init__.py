"""Training stages: supervised fine-tuning (and, later, continued pretraining and other objectives)."""
