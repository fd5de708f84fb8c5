"""Losses, one family per file: code checks, LLM judges, rubrics, preferences, mixes.

``base`` holds what every family shares (the ``Loss`` base, how a judged
output's record becomes a feedback target, the last node that routes an
LLM verdict back); the public names are exported from ``plait.optimization``.
"""
