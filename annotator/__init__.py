"""annotator: training-free dataset pre-labeling with CLIP-DIY.

Stages (one module each): vocab -> engine (multiscale + guidance + models) ->
records -> parts -> reduce -> export. See docs/design.md.
"""

__version__ = "0.1.0"
