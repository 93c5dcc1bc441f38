"""einc.runtime: data, training, evaluation and the results journal behind a search.

Submodules are imported directly (``from einc.runtime.train import train_and_score``); this file
imports nothing so that ``import einc.runtime.journal`` or a spawned worker stays light (no torch).
"""
