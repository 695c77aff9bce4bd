"""Maintainer tools: the documented-numbers check (:mod:`tools.claims`) and ``reproduce``."""
