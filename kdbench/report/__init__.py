"""The reporting layer: result records in, leaderboard out (Markdown, one HTML page, CSV, PNG).

It reads records and never imports torch or the training stack itself (tested); how a method is
shown (display name, row order) comes from its registration, read from the method catalog when a
table is built, so nothing here names a method. Layout: ``frame`` (records -> pandas frames, labels, cells,
settings), ``tables`` (each table declared once as columns), ``render`` (Markdown, HTML, CSV),
``plots``, ``build`` (the folder, its manifest and ``--check``); CSS and JS are files in
``assets/``.
"""
from .build import build_leaderboard, check_leaderboard, render

__all__ = ["build_leaderboard", "check_leaderboard", "render"]
