"""``lmforge export``: merged HF folder, GGUF files and an Ollama Modelfile, with parity checks (see ``run.py``)."""
