"""The flow image's build context (the Dockerfile `mfhelm image build` sends to ACR)."""
