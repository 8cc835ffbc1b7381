"""MAGE compared with MAE and I-JEPA: the baselines' objectives as tasks of the package's training loop, and the
harness that trains every method through that loop and measures them the same way.

- `ijepa`: the I-JEPA objective around transformers' `IJepaModel` (multi-block masks, predictor, EMA target).
- `tasks`: `MaeTask` and `IJepaTask` (`TrainingTask`s), run as `python -m mage_hf.comparison mae|ijepa`.
- `harness`: `CONTENDERS` (MAGE, MAGE-C, MAE, I-JEPA as training commands), the random-initialisation baseline,
  checkpoint loading, probes against raw pixels, and sample scoring.

The MNIST study that uses them, and its report, are repository tooling: `scripts/study_mnist.py`.
"""
