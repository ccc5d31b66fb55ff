"""Checkpoint files: their format, how they are written atomically and read without unpickling, and their schema."""
