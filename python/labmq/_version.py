"""The package's version: the C project's (project(VERSION) in the top-level
CMakeLists.txt). tests/test_version.py fails when the two differ, so a
release bumps both."""

__version__ = "0.1.0"
