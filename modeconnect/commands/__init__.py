"""Commands on files: one module per ``modeconnect`` command, each a ``*_files`` function.

A command opens a session (:mod:`.session`: checkpoints, data, the model, the checked
output targets, through :mod:`modeconnect.io`), calls the core once, and writes its
outputs together (:mod:`.results` for the study commands). The CLI (``cli/``) only
parses options, calls one of these and formats the result.
"""
