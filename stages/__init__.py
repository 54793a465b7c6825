"""The pipeline's four stages, one module each, run by DVC as
``python -m stages.<stage> <dataset>`` (see dvc.yaml). Each wires params to the
library in ``mnist_cnn`` and writes its outputs; no stage imports another."""
