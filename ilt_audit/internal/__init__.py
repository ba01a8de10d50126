"""Private helpers of ilt-audit, not part of the public API: atomic files, the run lock, the
cache, the console, TOML writing, markup escaping, this process's place in a ``torchrun`` job, and
the SIGTERM that asks training to stop (preemption).

May import: :mod:`ilt_audit.errors` only; every stage may import it (it is the bottom of
``pyproject.toml``'s import-linter contract).
"""
