"""mfhelm's calls to Azure's control plane and Key Vault.

Every Azure SDK import lives inside the function that needs it, so importing
these modules costs nothing until a command actually talks to Azure.
"""
