"""The modeconnect command line (installed as the ``modeconnect_cli`` package)."""
