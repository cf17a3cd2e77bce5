"""tokenfuse: meter every LLM token and stop spend before it happens."""

__version__ = "0.1.0"
