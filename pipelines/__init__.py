"""The pipeline graph (audit.py) and its compiled, committed IR (compiled/audit.yaml)."""
