"""Helpers shared by plait's own tests, on top of the fakes ``plait.testing`` ships.

``pyproject.toml`` puts ``tests/`` on pytest's ``pythonpath``, so test modules
import these as ``support.<module>``.
"""
