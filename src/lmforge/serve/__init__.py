"""Serving a trained model: the chat REPL (and, later, the OpenAI-compatible server)."""
