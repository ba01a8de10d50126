"""``python -m ilt_audit`` runs the same CLI as ``ilt-audit``."""

from ilt_audit.cli import main

main()
