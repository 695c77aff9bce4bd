"""Adapters to other frameworks. Each submodule imports its framework lazily:
``import modeconnect`` never imports any of them.

- :mod:`modeconnect.integrations.flower`: ``AlignedFedAvg``, a Flower strategy
  (``pip install 'modeconnect[flower]'``).
"""
