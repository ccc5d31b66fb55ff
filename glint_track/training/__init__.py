"""Training: the loop, its stateful parts, resume, checkpointing, DDP, stopping, and sweeps of runs."""
