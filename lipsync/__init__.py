"""Real-time lip-sync serving: shared protocol stubs, avatar package format and the CLI."""

__version__ = "0.1.0"
