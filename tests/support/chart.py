"""Rendering the Helm chart in tests: with the helm CLI when present, else Helm's engine from helm-python-sdk."""

from __future__ import annotations

import copy
import json
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "memaudit"
VALUES = yaml.safe_load((CHART / "values.yaml").read_text())
SCHEMA = json.loads((CHART / "values.schema.json").read_text())


def deep_merge(base: dict, update: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in update.items():
        out[key] = deep_merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def _engine() -> str | None:
    if shutil.which("helm"):
        return "helm-cli"
    try:
        import helm_python  # noqa: F401
    except ImportError:
        return None
    return "helm-python-sdk"


ENGINE = _engine()
needs_helm = pytest.mark.skipif(
    ENGINE is None,
    reason="helm lint/template did NOT run: no `helm` on PATH and helm-python-sdk is not installed "
    "(the structural, values and schema tests above still ran)",
)


def render(values: dict, *, namespace: str = "kubeflow", release: str = "memaudit") -> list[dict]:
    """Rendered manifests (hooks included, NOTES.txt left out) of the chart with ``values`` over the defaults."""
    if ENGINE == "helm-cli":
        proc = subprocess.run(
            ["helm", "template", release, str(CHART), "--namespace", namespace, "--values", "-"],
            input=yaml.safe_dump(values),
            capture_output=True,
            text=True,
        )
        if proc.returncode:
            raise RuntimeError(proc.stderr)
        texts = [proc.stdout]
    else:
        import helm_python

        with helm_python.Chart.load(CHART) as chart:
            out = chart.render(values, name=release, namespace=namespace, is_install=True)
        texts = [text for name, text in sorted(out.items()) if not name.endswith("NOTES.txt")]
    return [doc for text in texts for doc in yaml.safe_load_all(text) if doc]


def by_kind(docs: list[dict]) -> dict[tuple[str, str], dict]:
    return {(doc["kind"], doc["metadata"]["name"]): doc for doc in docs}
