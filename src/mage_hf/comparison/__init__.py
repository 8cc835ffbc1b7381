"""MAGE compared with MAE and I-JEPA: the baselines' pretraining objectives and the harness that trains all three
on the same data and budget, then evaluates them the same way."""
