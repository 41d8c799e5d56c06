"""imflow: instant messaging on Faust streams, Redis and a DuckDB archive, extended by plugins."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("imflow")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0"
