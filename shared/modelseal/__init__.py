"""modelseal: deliver an encrypted model into a pod; plaintext only in memory."""

__version__ = "0.1.0"
