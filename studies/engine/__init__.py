"""The study's engine: configs in, rows out."""
