"""The runtime images: Dockerfiles (hadolint and the project's own rules), the requirements they install,
images/build.sh (the `make images` target) and the one source of image tags.

No image is built here (no Docker daemon): the Dockerfiles are linted and read, and build.sh runs against fake
`docker` commands that record what they are asked to do.
"""

from __future__ import annotations

import re
import shutil
import stat
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

from memaudit.config import RunConfig

ROOT = Path(__file__).resolve().parents[2]
IMAGES = ROOT / "images"
DOCKERFILES = {kind: IMAGES / f"runtime-{kind}" / "Dockerfile" for kind in ("gpu", "cpu")}  # the runtime images
MLFLOW_DOCKERFILE = IMAGES / "mlflow" / "Dockerfile"  # the chart's tracking server
CHART_VALUES = yaml.safe_load((ROOT / "charts" / "memaudit" / "values.yaml").read_text())
PYPROJECT = ROOT / "pyproject.toml"
HADOLINT = Path(sys.executable).parent / "hadolint"
REQUIREMENTS = [sys.executable, str(IMAGES / "requirements.py")]


def _instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    lines, current = [], ""
    for raw in path.read_text().splitlines():
        if raw.lstrip().startswith("#") and not current:
            continue
        current += raw.rstrip("\\").strip() + " " if raw.rstrip().endswith("\\") else raw.strip()
        if not raw.rstrip().endswith("\\"):
            if current.strip():
                lines.append(current.strip())
            current = ""
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1] if " " in line else "") for line in lines]


def _arg_defaults(path: Path) -> dict[str, str]:
    return dict(arg.split("=", 1) for op, arg in _instructions(path) if op == "ARG" and "=" in arg)


def _project() -> dict:
    return tomllib.loads(PYPROJECT.read_text())["project"]


# ------------------------------------------------------------------------------------------------ hadolint


@pytest.mark.parametrize("path", [*DOCKERFILES.values(), MLFLOW_DOCKERFILE], ids=["gpu", "cpu", "mlflow"])
def test_hadolint_passes(path):
    proc = subprocess.run([str(HADOLINT), "--failure-threshold", "style", str(path)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_hadolint_does_fail_on_a_bad_dockerfile(tmp_path):
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM ubuntu:latest\nRUN apt-get update && apt-get install -y curl\nRUN pip install requests\n")
    proc = subprocess.run([str(HADOLINT), str(bad)], capture_output=True, text=True)
    assert proc.returncode != 0
    assert {"DL3007", "DL3008", "DL3013"} <= set(re.findall(r"DL\d{4}", proc.stdout))


# ------------------------------------------------------------------------------------------ Dockerfile rules


@pytest.mark.parametrize("kind", list(DOCKERFILES))
def test_torch_pin_matches_pyproject(kind):
    pin = subprocess.run([*REQUIREMENTS, str(PYPROJECT), "--pin", "torch"], capture_output=True, text=True)
    assert pin.returncode == 0, pin.stderr
    assert _arg_defaults(DOCKERFILES[kind])["TORCH_VERSION"] == pin.stdout.strip()
    assert f"torch=={pin.stdout.strip()}" in _project()["dependencies"]


def test_gpu_image_cuda_versions_agree():
    args = _arg_defaults(DOCKERFILES["gpu"])
    base = re.fullmatch(r"nvidia/cuda:(\d+)\.(\d+)\.(\d+)-runtime-ubuntu(\d+\.\d+)", args["BASE_IMAGE"])
    assert base, f"exact nvidia/cuda runtime tag expected, got {args['BASE_IMAGE']}"
    cuda = f"{base.group(1)}.{base.group(2)}"
    assert args["TORCH_CUDA"] == cuda
    assert args["TORCH_INDEX_URL"] == f"https://download.pytorch.org/whl/cu{base.group(1)}{base.group(2)}"
    # the torch 2.13 CUDA variants PyTorch publishes
    assert args["TORCH_INDEX_URL"].rsplit("/", 1)[1] in {"cu126", "cu130", "cu132"}


def test_cpu_image_installs_the_cpu_build_of_torch():
    args = _arg_defaults(DOCKERFILES["cpu"])
    assert args["TORCH_INDEX_URL"] == "https://download.pytorch.org/whl/cpu"
    assert re.fullmatch(r"python:3\.\d+\.\d+-slim-\w+", args["BASE_IMAGE"]), "exact python tag expected"
    assert "torch.version.cuda is None" in DOCKERFILES["cpu"].read_text()


@pytest.mark.parametrize("kind", list(DOCKERFILES))
def test_dependencies_before_source_then_non_root(kind):
    ops = _instructions(DOCKERFILES[kind])
    index = {(op, arg.split()[0] if arg else ""): i for i, (op, arg) in enumerate(ops)}
    torch_install = next(i for i, (op, arg) in enumerate(ops) if op == "RUN" and '"torch==' in arg)
    deps_install = next(i for i, (op, arg) in enumerate(ops) if op == "RUN" and "pip install --require-hashes" in arg)
    first_source = min(index[("COPY", name)] for name in ("src", "components", "pipelines"))
    assert torch_install < index[("COPY", "pyproject.toml")] < deps_install < first_source
    user = [i for i, (op, _) in enumerate(ops) if op == "USER"]
    assert user and user[-1] > first_source
    assert re.fullmatch(r"[1-9]\d{3,}:[1-9]\d{3,}", ops[user[-1]][1]), "numeric non-root uid:gid"


@pytest.mark.parametrize("kind", list(DOCKERFILES))
def test_hf_cache_is_a_volume_and_no_secret_is_baked_in(kind):
    ops = _instructions(DOCKERFILES[kind])
    env = " ".join(arg for op, arg in ops if op == "ENV")
    hf_home = re.search(r"HF_HOME=(\S+)", env).group(1)
    assert any(op == "VOLUME" and hf_home in arg for op, arg in ops)
    names = re.findall(r"(\w+)=", env) + [arg.split("=")[0] for op, arg in ops if op == "ARG"]
    assert not [n for n in names if re.search(r"TOKEN|SECRET|PASSWORD|ACCESS_KEY", n, re.IGNORECASE)]
    assert "PATH=/opt/venv/bin" in env  # `python3` of KFP's component command is the venv's
    # an audit of sensitive data sends no usage telemetry (Hugging Face Hub, MLflow, and the common opt-out)
    assert {"HF_HUB_DISABLE_TELEMETRY=1", "MLFLOW_DISABLE_TELEMETRY=true", "DO_NOT_TRACK=1"} <= set(env.split())


@pytest.mark.parametrize("path", [*DOCKERFILES.values(), MLFLOW_DOCKERFILE], ids=["gpu", "cpu", "mlflow"])
def test_dockerignore_sends_what_the_dockerfile_copies_and_nothing_else(path):
    ignore = [line for line in (ROOT / ".dockerignore").read_text().splitlines() if line and line[0] != "#"]
    assert ignore[0] == "*"
    allowed = {line[1:].rstrip("/") for line in ignore if line.startswith("!")}
    copied = {source for op, arg in _instructions(path) if op == "COPY" for source in arg.split()[:-1]}
    assert copied <= allowed and all((ROOT / path).exists() for path in copied)
    assert not {".venv", "runs", "tests", "charts"} & allowed


# -------------------------------------------------------------------------------------------- requirements


def _requirements(*args: str) -> list[str]:
    proc = subprocess.run([*REQUIREMENTS, str(PYPROJECT), *args], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.split()


def test_requirements_are_pyprojects_pins():
    deps = _project()["dependencies"]
    assert _requirements() == deps
    gpu = _requirements("--extra", "gpu", "--exclude", "torch")
    assert gpu == [d for d in deps if not d.startswith("torch==")] + _project()["optional-dependencies"]["gpu"]
    cpu = _requirements("--with", "boto3", "--exclude", "torch")
    assert cpu[-1].startswith("boto3==") and cpu[-1] in _project()["optional-dependencies"]["dev"]
    assert all("==" in line for line in gpu + cpu)


def test_requirements_check_compares_the_installed_version(tmp_path):
    import numpy

    ok = subprocess.run([*REQUIREMENTS, str(PYPROJECT), "--check", "numpy"], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    fake = tmp_path / "pyproject.toml"
    fake.write_text('[project]\nname = "x"\ndependencies = ["numpy==0.0.1"]\n')
    bad = subprocess.run([*REQUIREMENTS, str(fake), "--check", "numpy"], capture_output=True, text=True)
    assert bad.returncode == 1
    assert f"installed numpy {numpy.__version__} differs from the pin 0.0.1" in bad.stderr


def _lock_module():
    import importlib.util

    spec = importlib.util.spec_from_file_location("images_lock", IMAGES / "lock.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _lock_entries(path: Path) -> dict[str, tuple[str, list[str]]]:
    """{name: (version, sha256 hashes)} of a lock file."""
    entries: dict[str, tuple[str, list[str]]] = {}
    name = None
    for line in path.read_text().splitlines():
        if match := re.match(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+)", line):
            name = re.sub(r"[-_.]+", "-", match.group(1)).lower()
            entries[name] = (match.group(2), [])
        elif hashed := re.search(r"--hash=sha256:([0-9a-f]+)", line):
            entries[name][1].append(hashed.group(1))
    return entries


@pytest.mark.parametrize("image", ["runtime-gpu", "runtime-cpu", "mlflow"])
def test_each_image_installs_its_hashed_lock_of_pyprojects_pins(image):
    lock = _lock_module()
    entries = _lock_entries(lock.lock_path(image))
    selection = lock.SELECTIONS[image]
    pins = _requirements(*selection, *([] if "--only" in selection else ["--exclude", "torch"]))
    for pin in pins:  # the lock is current: `make lock` after changing a pin
        name, version = pin.split("[")[0].split("==")[0], pin.split("==")[1]
        assert entries[re.sub(r"[-_.]+", "-", name).lower()][0] == version, pin
    assert len(entries) > 2 * len(pins)  # transitive dependencies are locked too
    assert all(hashes and all(len(h) == 64 for h in hashes) for _, hashes in entries.values())
    assert not [name for name in entries if lock.FROM_TORCH_INDEX.match(name)]  # from PyTorch's index instead
    ops = _instructions(IMAGES / image / "Dockerfile")
    installs = [arg for op, arg in ops if op == "RUN" and "--require-hashes" in arg]
    assert len(installs) == 1 and "--no-deps -r /tmp/build/requirements.lock" in installs[0]
    (copied,) = [arg for op, arg in ops if op == "COPY" and "requirements.lock" in arg]
    assert copied.endswith(f"images/{image}/requirements.lock /tmp/build/")


def test_the_mlflow_image_has_mlflow_and_boto3_only_and_runs_as_non_root():
    entries = _lock_entries(_lock_module().lock_path("mlflow"))
    assert {"mlflow", "boto3"} <= set(entries)
    assert not {"torch", "transformers", "peft", "memaudit", "kfp"} & set(entries)  # no model or pipeline code
    ops = _instructions(MLFLOW_DOCKERFILE)
    assert not [arg for op, arg in ops if op == "COPY" and not arg.startswith("images/mlflow/requirements.lock")]
    assert ops[-3][0] == "USER" and ops[-3][1] == "10001:10001"  # the chart's pod security context
    env = " ".join(arg for op, arg in ops if op == "ENV")
    assert {"MLFLOW_DISABLE_TELEMETRY=true", "DO_NOT_TRACK=1"} <= set(env.split())
    assert _arg_defaults(MLFLOW_DOCKERFILE)["BASE_IMAGE"] == _arg_defaults(DOCKERFILES["cpu"])["BASE_IMAGE"]


def test_the_lock_leaves_out_torch_and_its_cuda_stack_with_their_hashes():
    text = (
        "filelock==3.1 \\\n    --hash=sha256:aa\n    # via torch\n"
        "nvidia-cublas==13.1 \\\n    --hash=sha256:bb\n    # via torch\n"
        "triton==3.5 \\\n    --hash=sha256:cc\n"
        "tqdm==4.7 \\\n    --hash=sha256:dd\n"
    )
    kept = _lock_module().without_torch_stack(text)
    assert kept == "filelock==3.1 \\\n    --hash=sha256:aa\n    # via torch\ntqdm==4.7 \\\n    --hash=sha256:dd\n"


def test_requirements_reject_unknown_groups():
    proc = subprocess.run([*REQUIREMENTS, str(PYPROJECT), "--extra", "cuda"], capture_output=True, text=True)
    assert proc.returncode != 0 and "no optional-dependency group 'cuda'" in proc.stderr


# ------------------------------------------------------------------------------------- build.sh, make images


def _fake_engine(bin_dir: Path, *, daemon: bool = True) -> Path:
    """A `docker` that logs its arguments; `docker info` fails when there is no daemon."""
    log = bin_dir / "docker.log"
    script = bin_dir / "docker"
    script.write_text(f'#!/bin/sh\nif [ "$1" = info ]; then exit {0 if daemon else 1}; fi\necho "$@" >> "{log}"\n')
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    return log


def _isolated_path(tmp_path: Path) -> Path:
    """A bin directory holding only what build.sh needs (so a real docker/podman on the machine is not seen)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("bash", "sh", "dirname", "sed"):
        (bin_dir / tool).symlink_to(shutil.which(tool))
    return bin_dir


def _build(tmp_path: Path, *args: str, path: Path, **env: str) -> subprocess.CompletedProcess:
    environ = {"PATH": str(path), "PYTHON": sys.executable, "HOME": str(tmp_path), **env}
    return subprocess.run(
        [str(path / "bash"), str(IMAGES / "build.sh"), *args], capture_output=True, text=True, env=environ
    )


def test_build_script_builds_both_images_with_the_config_tags(tmp_path):
    bin_dir = _isolated_path(tmp_path)
    log = _fake_engine(bin_dir)
    proc = _build(tmp_path, "--push", path=bin_dir)
    assert proc.returncode == 0, proc.stderr
    calls = log.read_text().splitlines()
    run, version = RunConfig(), _project()["version"]
    mlflow = CHART_VALUES["mlflow"]["image"]  # the chart's server image is built with the chart's tag
    assert calls == [
        f"build --file {DOCKERFILES['gpu']} --tag {run.image_gpu} --build-arg VERSION={version} {ROOT}",
        f"build --file {DOCKERFILES['cpu']} --tag {run.image_cpu} --build-arg VERSION={version} {ROOT}",
        f"build --file {MLFLOW_DOCKERFILE} --tag {mlflow} --build-arg VERSION={version} {ROOT}",
        f"push {run.image_gpu}",
        f"push {run.image_cpu}",
        f"push {mlflow}",
    ]
    assert "images: built" in proc.stdout


def test_build_script_takes_registry_tags_and_extra_build_args(tmp_path):
    bin_dir = _isolated_path(tmp_path)
    log = _fake_engine(bin_dir)
    proc = _build(
        tmp_path, "--only", "cpu", "--", "--build-arg", "BASE_IMAGE=python:3.12.13-slim-trixie@sha256:ab",
        path=bin_dir, IMAGE_CPU="registry.example.com/memaudit/runtime-cpu:dev",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    (call,) = log.read_text().splitlines()
    assert "--tag registry.example.com/memaudit/runtime-cpu:dev" in call
    assert call.endswith(f"--build-arg BASE_IMAGE=python:3.12.13-slim-trixie@sha256:ab {ROOT}")


def test_build_script_without_a_container_engine_says_so_and_fails(tmp_path):
    proc = _build(tmp_path, path=_isolated_path(tmp_path))
    assert proc.returncode == 1
    assert "no container engine found" in proc.stderr and "no image was built" in proc.stderr


def test_build_script_with_an_unreachable_daemon_says_so_and_fails(tmp_path):
    bin_dir = _isolated_path(tmp_path)
    log = _fake_engine(bin_dir, daemon=False)
    proc = _build(tmp_path, path=bin_dir)
    assert proc.returncode == 1
    assert "cannot reach its daemon" in proc.stderr
    assert not log.exists()


def test_build_script_dry_run_needs_no_engine(tmp_path):
    proc = _build(tmp_path, "--dry-run", path=_isolated_path(tmp_path))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("+ docker build") == 3 and "nothing was built" in proc.stdout


def test_make_images_runs_the_build_script():
    # --no-print-directory: under `make test` this make is nested and would print "Entering directory" lines
    proc = subprocess.run(["make", "--no-print-directory", "-n", "images"], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "bash images/build.sh" in proc.stdout.splitlines()[-1]


# ----------------------------------------------------------------------------- one source for image tags


def test_image_tags_follow_the_package_version():
    run, version = RunConfig(), _project()["version"]
    assert run.image_gpu.endswith(f"/runtime-gpu:{version}") and run.image_cpu.endswith(f"/runtime-cpu:{version}")
    assert CHART_VALUES["mlflow"]["image"].endswith(f"/mlflow:{version}")
    chart = yaml.safe_load((ROOT / "charts" / "memaudit" / "Chart.yaml").read_text())
    assert chart["appVersion"] == version


def test_compiled_pipeline_references_the_image_tags_from_config():
    spec = next(yaml.safe_load_all((ROOT / "pipelines" / "compiled" / "audit.yaml").read_text()))
    executors = spec["deploymentSpec"]["executors"]
    images = {name: executor["container"]["image"] for name, executor in executors.items()}
    run = RunConfig()
    assert set(images.values()) == {run.image_gpu, run.image_cpu}
    gpu = {name for name, image in images.items() if image == run.image_gpu}
    assert gpu == {"exec-finetune", "exec-score"}
    values = yaml.safe_load((ROOT / "charts" / "memaudit" / "values.yaml").read_text())
    assert (values["config"]["run"]["image_gpu"], values["config"]["run"]["image_cpu"]) == (
        run.image_gpu,
        run.image_cpu,
    )


def test_components_run_the_images_python_without_installing_anything():
    """KFP runs `python3 -m kfp.dsl.executor_main` in the image: python3 must be the venv's (PATH), and nothing may
    be pip-installed at run time (the images run as uid 10001 and the venv belongs to root)."""
    spec = next(yaml.safe_load_all((ROOT / "pipelines" / "compiled" / "audit.yaml").read_text()))
    for name, executor in spec["deploymentSpec"]["executors"].items():
        command = " ".join(executor["container"]["command"])
        assert "python3 -m kfp.dsl.executor_main" in command, name
        assert "pip install" not in command, name


def test_requirements_only_prints_the_named_pins_or_refuses_an_unknown_name():
    assert _requirements("--only", "mlflow", "--only", "boto3") == [
        line for line in _project()["dependencies"] + _project()["optional-dependencies"]["dev"]
        if line.startswith(("mlflow[", "boto3=="))
    ]  # fmt: skip
    proc = subprocess.run([*REQUIREMENTS, str(PYPROJECT), "--only", "flask"], capture_output=True, text=True)
    assert proc.returncode != 0 and "'flask' is not a requirement" in proc.stderr
