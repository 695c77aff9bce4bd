"""Formats: the one place modeconnect reads and writes files.

Checkpoints (``.pt``, ``.safetensors``; :mod:`.checkpoints`), Hugging Face directories
(:mod:`.hf`), data (:mod:`.data`), model references and trust (:mod:`.references`),
output targets and staging (:mod:`.targets`), the spec cache (:mod:`.spec_cache`), the
HTML report (:mod:`.report`), and the rules every file from a stranger goes through:
bounded JSON (:mod:`.jsonfile`), links (:mod:`.links`), no network (:mod:`.offline`).
The core never imports this package; :mod:`modeconnect.commands` joins the two.
"""
