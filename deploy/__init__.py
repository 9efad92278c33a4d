"""Deployment artefacts; ``python -m deploy.build`` generates the Kubernetes manifests that copy other files."""
