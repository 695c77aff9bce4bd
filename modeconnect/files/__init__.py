"""The file layer: the one place modeconnect reads and writes files.

Checkpoints, model references, data, output targets and reports live here; the
core (spec, matching, evaluation, merging) only computes over models and state dicts.
"""
