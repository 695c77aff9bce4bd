"""The 0.2.0 name of the file layer, kept so that old imports keep working.

The layer is two packages now: :mod:`modeconnect.io` (formats: checkpoints, Hugging Face
directories, data, references and trust, output targets, the spec cache, the report)
and :mod:`modeconnect.commands` (one module per command, on top of ``io`` and the core).
``modeconnect.files.X`` is the module ``modeconnect.io.X`` or ``modeconnect.commands.X``
itself (:mod:`modeconnect._moved`), with a DeprecationWarning.
"""
