"""Process-level facts under data, models and training: seeds and random streams, the distributed world,
threads, the device."""
