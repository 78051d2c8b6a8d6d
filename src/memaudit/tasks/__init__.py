"""The pipeline's task bodies, one module per stage (prepare, split, finetune, score, aggregate, plot).

Each is what a KFP component calls: it resolves the config and the run's storage, reuses what the store holds
sealed or builds it with a stage function and seals it, tracks it in MLflow and reports progress, all through the
skeleton in :mod:`memaudit.tasks.runtime`.
"""
