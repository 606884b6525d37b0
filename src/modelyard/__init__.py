"""modelyard: one OpenAI-compatible gateway in front of every model."""

__version__ = "0.1.0"
