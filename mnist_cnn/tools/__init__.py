"""Tools around the pipeline, never imported by a stage (tests/test_layout.py checks):

predict         classify image files with a trained model (`mnist-cnn-predict`)
compare         experiments and seed runs side by side (`mnist-cnn-compare`)
check_results   is a run inside the committed seed band? (`mnist-cnn-check-results`)
report          the generated tables of README and docs (`python -m mnist_cnn.tools.report`)
bench           speed and accuracy against time, beside the keras.io peer (`mnist-cnn-bench`)
peer            the keras.io convnet, run as its users run it (the benchmark's peer)
restore         `make restore`: results and params back as committed after a failed run
turns           two commits' `dvc repro --force`, timed in turns, per stage
"""
