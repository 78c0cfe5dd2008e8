"""Cluster tests: a real Kubernetes control plane (or kind) started by the tests.

A package so its helper modules import as `cluster.<module>` and cannot
collide with helpers of the other test layers.
"""
