"""verify: the numerical proof. Hypothesis generates convolutions and attention layers; every check is
tied to a spec statement id and bounded by spec's bounds. Run `python -m pytest verify` or
`python -m verify` (the report); see verify/report.py.
"""
