"""Evaluation of MAGE and its peers: generation metrics (FID, Inception Score, precision / recall) and
representation probes (linear, k-NN, few-shot) for any transformers image model."""
