"""Glint data: HDF5 files (checked before they are read), batches, and the tools that make them
(pack, synth, inspect)."""
