"""Export: GGUF for llama.cpp (``gguf.py``: ``export_gguf``, ``write_gguf``, TQ2_0/TQ1_0 block writers)."""
