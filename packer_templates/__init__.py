"""Packer HCL templates and guest scripts, shipped as the package data `orchestrator.packer_templates`.

pyproject.toml maps this directory into the package; orchestrator/core/render.py reads it with
importlib.resources. This file makes it a regular package, which editable installs can map.
"""
