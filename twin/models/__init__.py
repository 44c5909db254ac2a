"""Cell models: the common interface and its implementations."""
