"""The reporting layer: result records in, leaderboard out (Markdown, one HTML page, CSV, PNG).

It reads records only and never imports torch or the training stack (tested), so tables can be
built anywhere the records are. Layout: ``frame`` (records -> pandas frames, labels, cells,
settings), ``tables`` (each table declared once as columns), ``render`` (Markdown, HTML, CSV),
``plots``, ``build`` (the folder, its manifest and ``--check``); CSS and JS are files in
``assets/``.
"""
from .build import build_leaderboard, check_leaderboard, render

__all__ = ["build_leaderboard", "check_leaderboard", "render"]
