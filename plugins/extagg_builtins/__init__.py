"""extagg's built-in components, written and loaded exactly like a third-party plugin.

Each module implements hooks from :mod:`extagg.hookspecs` and is listed under ``[project.entry-points.extagg]``
in extagg's ``pyproject.toml``; nothing here is imported by extagg itself.
"""
