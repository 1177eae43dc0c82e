"""mucode core: config, database models, the store, datasets, environment, sandbox and the CLI."""

__version__ = "0.1.0"
