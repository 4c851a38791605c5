"""AE-XAD explanation service: FastAPI application over the TorchScript models in a model store."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("aexad")
except PackageNotFoundError:  # running from a source checkout that is not installed
    __version__ = "0.0.0+unknown"
