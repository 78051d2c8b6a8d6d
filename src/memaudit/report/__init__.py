"""Figures and the HTML report of one audit, from the aggregate outputs (their format is in ``outputs``)."""
