"""Thin KFP components, one module per stage; each body calls :mod:`memaudit.tasks.cpu` or :mod:`memaudit.tasks.shadow`.

Images come from the config at compile time, so every module exposes ``component(image)`` that wraps its
function with ``dsl.component(base_image=image, install_kfp_package=False)`` (the runtime images ship kfp).
"""
