"""The model inside annotators' own tools (each an optional extra):

- :mod:`annotator.integrations.cvat`: a CVAT auto-annotation function module, for
  ``cvat-cli task auto-annotate TASK --function-module annotator.integrations.cvat``.
"""
