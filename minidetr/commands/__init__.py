"""The ``minidetr`` subcommands, one module each; ``minidetr.cli`` parses and dispatches.

``train`` (detection training and its report), ``checkpoints`` (``eval``, ``predict``,
``explain`` on a checkpoint), ``track`` (``train --task track`` and ``track``).
"""
