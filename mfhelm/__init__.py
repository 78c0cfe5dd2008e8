"""mfhelm: a production Metaflow stack on Azure, from Bicep and one Helm chart."""

# The one place the version is set (pyproject reads it through hatch), kept
# static so that `mfhelm --help` does not pay for importlib.metadata.
__version__ = "0.1.0"
