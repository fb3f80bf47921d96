"""kdbench: a benchmark suite and leaderboard for knowledge-distillation methods."""
from kdbench.core.errors import KDBenchError

__version__ = "0.1.0"
__all__ = ["KDBenchError", "__version__"]
