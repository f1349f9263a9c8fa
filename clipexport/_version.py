"""The package version, in its own module: `clipexport/__init__.py` does not run when a folder
named `clipexport` in the working directory makes the package a namespace package."""

__version__ = "0.1.0"
