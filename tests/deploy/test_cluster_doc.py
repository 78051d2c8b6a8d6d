"""docs/cluster.md: every command in it either runs here or is checked offline.

Untagged ```bash blocks run as they are (bash -euo pipefail) in a scratch copy of the repository layout. Blocks
tagged ```bash docker|cluster|helm|gcloud|az start with a visible "# needs ..." line and are checked: repository
paths they name exist; helm, kubectl, docker, memaudit, kubernetes-validate and cloud-CLI flags are ones those
tools define (kubectl's and docker's from their own --help when they are installed); the values that helm
commands set pass the chart's schema and render, and give memaudit a valid run config; the GPU pool examples'
labels and taints match what the run config selects and tolerates.
"""

from __future__ import annotations

import functools
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
import yaml

from memaudit.config import Toleration, load_config, preset_dict
from memaudit.tasks.prepare import config_from_parameters
from tests.support.chart import ENGINE, SCHEMA, VALUES, by_kind, deep_merge, render

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "cluster.md"
FENCE = re.compile(r"^```(\w+)(?: (\w+))?\n(.*?)^```$", re.MULTILINE | re.DOTALL)
TAGS = {"docker": "Docker", "cluster": "a cluster", "helm": "helm", "gcloud": "gcloud", "az": "the Azure CLI",
        "minio": "mc (the MinIO client)", "supply": "cosign and syft"}  # fmt: skip
UNCHECKED = {"base64", "openssl", "tr", "shred", "umask", "cosign", "syft"}  # not installed here: flags not checked
REPO_DIRS = ("charts/", "images/", "pipelines/", "docs/", "src/", "components/")

# Flags of the helm and cloud-CLI subcommands the doc uses, from each tool's reference documentation.
HELM_FLAGS = {
    "upgrade": {"--install", "--namespace", "-n", "--set", "--set-json", "--set-string", "--set-file", "--values",
                "-f", "--wait", "--timeout", "--create-namespace", "--atomic", "--version", "--dry-run"},
    "install": {"--namespace", "-n", "--set", "--set-json", "--set-string", "--set-file", "--values", "-f",
                "--wait", "--timeout", "--create-namespace", "--atomic", "--version", "--dry-run"},
    "template": {"--namespace", "-n", "--set", "--set-json", "--set-string", "--set-file", "--values", "-f",
                 "--show-only", "-s", "--kube-version", "--api-versions", "--output-dir", "--include-crds"},
    "lint": {"--strict", "--namespace", "-n", "--set", "--set-json", "--set-string", "--values", "-f", "--quiet",
             "--with-subcharts"},
    "uninstall": {"--namespace", "-n", "--wait", "--timeout", "--keep-history"},
}  # fmt: skip
CLOUD_FLAGS = {
    ("gcloud", "container node-pools create"): {"--cluster", "--location", "--region", "--zone", "--machine-type",
        "--accelerator", "--num-nodes", "--node-labels", "--node-taints", "--enable-autoscaling", "--min-nodes",
        "--max-nodes", "--disk-size", "--spot"},
    ("az", "aks nodepool add"): {"--resource-group", "--cluster-name", "--name", "--node-vm-size", "--node-count",
        "--labels", "--node-taints", "--enable-cluster-autoscaler", "--min-count", "--max-count", "--priority"},
}  # fmt: skip


def _blocks() -> list[tuple[str, str | None, str]]:
    return [(m.group(1), m.group(2), m.group(3)) for m in FENCE.finditer(DOC.read_text())]


def _commands(body: str) -> list[list[str]]:
    """Simple commands of a shell block: continuations joined, comments, heredocs and exports skipped, pipelines
    split, and ``$(...)`` substitutions checked as commands of their own."""
    text = re.sub(r"\\\n", " ", body)
    commands = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith(("#", "export ")):
            continue
        for inner in re.findall(r"\$\(([^()]*)\)", line):
            commands += [shlex.split(part) for part in inner.split("|")]
        line = re.sub(r"\$\([^()]*\)", "SUBST", line)
        for part in line.split(" | "):
            words = shlex.split(part.split(" > ")[0])
            while words and re.fullmatch(r"[A-Z_]+=\S*", words[0]):
                words.pop(0)  # VAR=value prefix
            commands.append(words)
    return commands


def _flags(words: list[str]) -> set[str]:
    return {w.split("=", 1)[0] for w in words if re.match(r"--?[A-Za-z]", w)}


@functools.cache
def _help_flags(*command: str, suffix: str = "--help") -> set[str]:
    text = subprocess.run([*command, suffix], capture_output=True, text=True).stdout
    return set(re.findall(r"(?<![\w-])(--?[A-Za-z][\w-]*)", text))


def _cli_flags_known(program: str, args: list[str]) -> set[str]:
    """Flags that ``program <subcommand>`` (kubectl, docker) defines, from its own help."""
    words = list(args)
    for flag in ("-n", "--namespace"):  # kubectl's global namespace flag may come first
        while flag in words[:1]:
            words = words[2:]
    subs = [w for w in words[:3] if not w.startswith("-")]
    known: set[str] = set()
    while subs and not known:  # the longest subcommand whose help lists flags
        known = _help_flags(program, *subs)
        subs = subs[:-1]
    if program == "kubectl":
        known |= _help_flags("kubectl", suffix="options")
    return known


def _memaudit_options(sub: str) -> set[str]:
    from typer.main import get_command

    from memaudit.cli import app

    command = get_command(app)
    for part in sub.split():
        command = command.commands[part]
    return {opt for param in command.params for opt in param.opts}


def _helm_values(words: list[str]) -> tuple[dict, str]:
    """The values and namespace a helm command sets (--set, --set-json, --namespace)."""
    import helm_python

    values: dict = {}
    namespace = "default"
    for i, word in enumerate(words):
        if word in {"--set", "--set-json"}:
            parse = helm_python.parse_set_string if word == "--set" else helm_python.parse_set_json
            values = deep_merge(values, parse(words[i + 1]))
        elif word in {"--namespace", "-n"}:
            namespace = words[i + 1]
    return values, namespace


TAGGED = [(tag, body) for lang, tag, body in _blocks() if lang == "bash" and tag]
OFFLINE = [body for lang, tag, body in _blocks() if lang == "bash" and not tag]
HELM_RENDERS = [
    words
    for _, body in TAGGED
    for words in _commands(body)
    if words[:1] == ["helm"] and words[1] in {"upgrade", "install", "template", "lint"}
]


def test_every_shell_block_runs_here_or_says_what_it_needs():
    for lang, tag, body in _blocks():
        assert lang in {"bash", "yaml"}, f"unexpected block language {lang}"
        if lang == "bash" and tag:
            assert tag in TAGS, f"unknown tag {tag}"
            assert body.startswith(f"# needs {TAGS[tag]}"), body.splitlines()[0]
    assert len(OFFLINE) >= 4 and len(TAGGED) >= 10


@pytest.fixture
def workdir(tmp_path):
    """The repository's top level as symlinks, so that files the doc writes land in a scratch folder."""
    for entry in ROOT.iterdir():
        if entry.name != ".git":
            (tmp_path / entry.name).symlink_to(entry)
    return tmp_path


@pytest.mark.parametrize("index", range(len(OFFLINE)))
def test_offline_block_runs(workdir, index):
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    proc = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", OFFLINE[index]],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    if "memaudit compile" in OFFLINE[index]:
        spec = next(yaml.safe_load_all((workdir / "audit.yaml").read_text()))  # valid YAML, header included
        assert spec["pipelineInfo"]["name"] == "memaudit-audit"
        defaults = {k: v.get("defaultValue") for k, v in spec["root"]["inputDefinitions"]["parameters"].items()}
        compiled = config_from_parameters(defaults["preset"], defaults["config_yaml"], defaults["overrides"])
        assert compiled.preset == "arc-mistral"
        if "gpu_tolerations" in OFFLINE[index]:  # the AKS toleration reaches the GPU tasks' pod spec
            assert [t.key for t in compiled.run.gpu_tolerations] == ["sku"]
            platform = list(yaml.safe_load_all((workdir / "audit.yaml").read_text()))[1]
            executors = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
            assert executors["exec-finetune"]["tolerations"][0]["key"] == "sku"
    if "--kubernetes-manifest" in OFFLINE[index]:
        kinds = {doc["kind"] for doc in yaml.safe_load_all((workdir / "audit-k8s.yaml").read_text()) if doc}
        assert kinds == {"Pipeline", "PipelineVersion"}


@pytest.mark.parametrize("index", range(len(TAGGED)))
def test_tagged_block_names_existing_files_and_real_flags(index):
    _, body = TAGGED[index]
    for words in _commands(body):
        program, args = words[0], words[1:]
        for word in args:
            path = word.split("=", 1)[-1]
            if path.startswith(REPO_DIRS):
                assert (ROOT / path).exists(), f"{path} does not exist"
        if program == "helm":
            assert _flags(args) <= HELM_FLAGS[args[0]], _flags(args) - HELM_FLAGS[args[0]]
            if args[0] != "uninstall":
                assert "charts/memaudit" in args, "helm commands use the chart in the repository"
        elif program in {"gcloud", "az"}:
            sub = next(s for (p, s) in CLOUD_FLAGS if p == program and " ".join(args).startswith(s))
            assert _flags(args) <= CLOUD_FLAGS[(program, sub)], _flags(args) - CLOUD_FLAGS[(program, sub)]
        elif program == "memaudit":
            sub = args[0]
            assert _flags(args) <= _memaudit_options(sub), _flags(args) - _memaudit_options(sub)
        elif program in {"kubectl", "docker", "mc"}:
            if not shutil.which(program):
                continue  # checked where the tool is installed
            known = _cli_flags_known(program, args)
            assert _flags(args) <= known, f"{program} {' '.join(args)}: unknown {_flags(args) - known}"
        elif program == "kubernetes-validate":
            assert _flags(args) <= _help_flags(str(Path(sys.executable).parent / program))
        elif program in {"images/build.sh", "make"}:
            assert (ROOT / "images" / "build.sh").is_file()
            if program == "make":
                assert args == ["images"] and "\nimages:" in (ROOT / "Makefile").read_text()
            else:
                own = args[: args.index("--")] if "--" in args else args  # after --: docker build's own flags
                assert _flags(own) <= _help_flags("bash", str(ROOT / "images" / "build.sh"))
                if "--" in args and shutil.which("docker"):
                    assert _flags(args[args.index("--") + 1 :]) <= _cli_flags_known("docker", ["build"])
        else:
            assert program in UNCHECKED, f"command {program} is not checked"


@pytest.mark.skipif(ENGINE is None, reason="no helm engine (helm CLI or helm-python-sdk): helm commands not rendered")
@pytest.mark.parametrize("index", range(len(HELM_RENDERS)))
def test_helm_commands_values_pass_the_schema_render_and_give_a_valid_run_config(tmp_path, index):
    values, namespace = _helm_values(HELM_RENDERS[index])
    jsonschema.validate(deep_merge(VALUES, values), SCHEMA, cls=jsonschema.Draft7Validator)
    docs = by_kind(render(values, namespace=namespace))
    config = tmp_path / "config.yaml"
    config.write_text(docs[("ConfigMap", "memaudit-run")]["data"]["config.yaml"])
    cfg = load_config(path=config)
    assert cfg.run.s3_secret == values.get("config", {}).get("run", {}).get("s3_secret", "memaudit-s3")


def _tolerates(tolerations: list[Toleration], key: str, value: str, effect: str) -> bool:
    return any(
        t.key == key and t.effect in {effect, None} and (t.operator == "Exists" or t.value == value)
        for t in tolerations
    )


def _pool(program: str) -> tuple[dict[str, str], list[tuple[str, str, str]]]:
    """Labels and taints of the doc's node-pool command for ``program``."""
    (words,) = [w for _, body in TAGGED for w in _commands(body) if w[0] == program]
    flag = {"gcloud": ("--node-labels", "--node-taints"), "az": ("--labels", "--node-taints")}[program]
    labels = dict(kv.split("=") for kv in words[words.index(flag[0]) + 1].split(","))
    taints = []
    if flag[1] in words:
        for spec in words[words.index(flag[1]) + 1].split(","):
            kv, effect = spec.split(":")
            taints.append((*kv.split("="), effect))
    if program == "gcloud":  # GKE taints GPU nodes itself
        taints.append(("nvidia.com/gpu", "present", "NoSchedule"))
    return labels, taints


def _helm_config(cloud: str, tmp_path: Path):
    (words,) = [w for _, body in TAGGED if f"({cloud})" in body.splitlines()[0] for w in _commands(body)]
    values, namespace = _helm_values(words)
    docs = by_kind(render(values, namespace=namespace))
    (tmp_path / "c.yaml").write_text(docs[("ConfigMap", "memaudit-run")]["data"]["config.yaml"])
    return load_config(path=tmp_path / "c.yaml")


@pytest.mark.skipif(ENGINE is None, reason="no helm engine (helm CLI or helm-python-sdk): helm commands not rendered")
@pytest.mark.parametrize("cloud", ["GKE", "AKS"])
def test_gpu_pool_examples_match_the_runs_selector_and_tolerations(tmp_path, cloud):
    cfg = _helm_config(cloud, tmp_path)
    labels, taints = _pool({"GKE": "gcloud", "AKS": "az"}[cloud])
    if cloud == "GKE":
        labels["cloud.google.com/gke-accelerator"] = "nvidia-a100-80gb"  # GKE labels GPU nodes itself
    assert cfg.run.gpu_node_selector.items() <= labels.items()
    assert all(_tolerates(cfg.run.gpu_tolerations, *taint) for taint in taints)


def test_eks_nodegroup_matches_the_presets_selector_and_toleration():
    (body,) = [body for lang, tag, body in _blocks() if lang == "yaml" and tag == "eksctl"]
    (group,) = yaml.safe_load(body)["managedNodeGroups"]
    run = load_config(preset="arc-mistral").run
    assert run.gpu_node_selector.items() <= group["labels"].items()
    assert all(_tolerates(run.gpu_tolerations, t["key"], t["value"], t["effect"]) for t in group["taints"])
    assert preset_dict("arc-mistral")["run"]["gpu_node_selector"] == {"memaudit.io/pool": "gpu"}
