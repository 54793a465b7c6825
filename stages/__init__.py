"""Pipeline stages: one module per DVC stage plus small shared modules.

Every stage is run by DVC as ``python -m stages.<stage> <dataset>``; see dvc.yaml.
"""
