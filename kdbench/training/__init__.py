"""One run's training: the method contract, the frozen teacher, connectors, shared losses, the engine and
tracking."""
