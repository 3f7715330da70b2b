"""Detection: how far a metric has moved and whether that is an incident.

- `window.py`: the window rule, a robust z-score of a recent window against a baseline, shared by the
  observer (detect), analyst (explain) and engineer (verify).
- `stream.py`: the observer's streaming detector ensemble per series, gated by the metric's floor.
- `detectors.py`: the streaming detectors themselves (measured on NAB, docs/nab.md).
- `rules.py`: which way each metric is worse and the smallest change that matters.
"""
