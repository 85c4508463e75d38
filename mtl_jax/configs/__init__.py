"""Experiment configs: each module defines ``get_config()`` returning a ``ConfigDict``.

``default.py`` holds every key with its default; experiment configs start from it.
"""
