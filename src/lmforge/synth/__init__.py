"""Stage ``synth``: a teacher (OpenAI-compatible endpoint or local model) writes training records."""
