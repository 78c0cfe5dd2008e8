"""mfhelm: a production Metaflow stack on Azure, from Bicep and one Helm chart."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("mfhelm")
except PackageNotFoundError:  # running from a source tree without install
    __version__ = "0.0.0+unknown"
