"""ARM deployment templates: the expression language, its function families, copy loops,
user-defined functions and bicep's languageVersion 2.0 output, expanded into the one
imageTemplates resource a deployment holds (see expand.py)."""
from orchestrator.core.arm.expand import expand_deployment, expand_deployment_at

__all__ = ["expand_deployment", "expand_deployment_at"]
