"""factory_mas: a multi-agent smart-factory monitoring backend in one Python process."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("factory_mas")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0"
