"""The stages as plain functions on explicit inputs: finetune (with its checkpoint schedule and folder), score
(with the score file) and aggregate (with the population reader). No object store, tracking or progress inside:
the tasks (:mod:`memaudit.tasks`) and the ``memaudit stage`` commands call them."""
