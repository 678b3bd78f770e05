"""ftprep orchestration: CLI, configuration, readers and writers, the runner."""

__version__ = "0.1.0"
