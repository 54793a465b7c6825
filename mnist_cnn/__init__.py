"""Library behind the DVC pipeline: CNNs on MNIST and Fashion-MNIST with Keras/TensorFlow.

The four stage modules in `stages/` wire params to the functions here, the pipeline's
modules:
  params          params.yaml as one typed schema; `python -m mnist_cnn.params` checks it
  datasets        facts about each dataset: files, checksums, offline copies, class names
  sources         fetch and verify the raw files (directory, offline package, mirrors)
  idx             the IDX file format
  preprocessing   scaling, one-hot labels, stratified splits and subsets
  artifacts       where every stage output lives, and atomic writes
  model, layers   the CNN built from params (with a fused batch-norm), save without timestamps
  input_pipeline  tf.data pipelines with stateless augmentation
  runtime         precision, tf.distribute strategy, the environment a run records
  training        determinism, callbacks, choosing the epoch to keep
  evaluation      test metrics and loading trained models
  figures         matplotlib PNGs
The tools around the pipeline (predict, compare, bench, ...; no stage imports them) are in
the subpackage `mnist_cnn.tools`.
"""

import os

# Environment defaults, set once here because every module of the package (and so every
# stage) imports this first, before TensorFlow or matplotlib load:
#   - TensorFlow's C++ log: warnings and info hidden, errors still shown;
#   - matplotlib draws headless (no display on CI or servers).
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("MPLBACKEND", "Agg")
