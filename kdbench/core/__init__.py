"""The bottom layer: errors, registries, file locks, digests and count checks; imports nothing else of kdbench."""
