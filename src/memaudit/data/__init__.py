"""The data: dataset sources, the pool (templates, hold-out, label noise), the synthetic set, membership splits."""
