#!/usr/bin/env bash
# Build memaudit's images: the two runtime images, tagged with the tags in memaudit's config (run.image_gpu,
# run.image_cpu in src/memaudit/config/settings.py: the one place their tags come from; `memaudit compile` writes
# the same tags into the pipeline and the Helm chart's values.yaml repeats them), and the MLflow server's image,
# tagged with the chart's mlflow.image. `make images` runs this script.
#
#   images/build.sh [--push] [--only gpu|cpu|mlflow] [--dry-run] [-- EXTRA BUILD ARGS...]
#
#   --push        push the tags after building (log in to the registry first)
#   --only X      build only the gpu, the cpu or the mlflow image
#   --dry-run     print the commands instead of running them (no container engine needed)
#   IMAGE_GPU, IMAGE_CPU   override the tags (e.g. your registry); compile with the same tags:
#                          memaudit compile --set run.image_gpu=$IMAGE_GPU --set run.image_cpu=$IMAGE_CPU
#   IMAGE_MLFLOW           override the MLflow image's tag (give it to the chart as mlflow.image)
#   CONTAINER_ENGINE       docker (default when present) or podman
#   PYTHON                 the Python that has memaudit installed (default: .venv/bin/python, else python3)
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
push=0
dry_run=0
only=""
extra=()
while [ $# -gt 0 ]; do
    case "$1" in
        --push) push=1 ;;
        --dry-run) dry_run=1 ;;
        --only)
            only=${2:-}
            shift
            ;;
        --) shift; extra=("$@"); break ;;
        -h | --help)
            sed -n '2,18p' "$0"
            exit 0
            ;;
        *)
            echo "images/build.sh: unknown option $1 (see --help)" >&2
            exit 2
            ;;
    esac
    shift
done
case "$only" in "" | gpu | cpu | mlflow) ;; *)
    echo "images/build.sh: --only takes gpu, cpu or mlflow, not '$only'" >&2
    exit 2
    ;;
esac

python=${PYTHON:-$root/.venv/bin/python}
[ -x "$python" ] || python=$(command -v python3 || true)
if ! tags=$("$python" -c 'import sys, yaml
from memaudit.config import RunConfig
import importlib.metadata as m
r = RunConfig()
chart = yaml.safe_load(open(sys.argv[1]))
print(r.image_gpu, r.image_cpu, chart["mlflow"]["image"] or "-", m.version("memaudit"))' "$root/charts/memaudit/values.yaml" 2>/dev/null); then
    echo "images/build.sh: cannot read the image tags from memaudit's config with '$python';" \
        "run 'make images' (it creates .venv) or set PYTHON to a Python with memaudit installed" >&2
    exit 2
fi
read -r default_gpu default_cpu default_mlflow version <<<"$tags"
image_gpu=${IMAGE_GPU:-$default_gpu}
image_cpu=${IMAGE_CPU:-$default_cpu}
image_mlflow=${IMAGE_MLFLOW:-$default_mlflow}

run() {
    echo "+ $*"
    if [ "$dry_run" = 0 ]; then "$@"; fi
}

engine=${CONTAINER_ENGINE:-}
if [ "$dry_run" = 1 ]; then
    engine=${engine:-docker}
else
    if [ -z "$engine" ]; then
        for candidate in docker podman; do
            if command -v "$candidate" >/dev/null 2>&1; then
                engine=$candidate
                break
            fi
        done
    fi
    if [ -z "$engine" ] || ! command -v "$engine" >/dev/null 2>&1; then
        echo "images: no container engine found (${engine:-docker or podman} is not on PATH), so no image was built." >&2
        echo "images: install Docker (or Podman) and run 'make images' again, or build on a machine that has one;" \
            "'images/build.sh --dry-run' prints the build commands." >&2
        exit 1
    fi
    if ! "$engine" info >/dev/null 2>&1; then
        echo "images: '$engine' is installed but cannot reach its daemon ('$engine info' fails), so no image was built." >&2
        echo "images: start the daemon (or use CONTAINER_ENGINE=podman) and run 'make images' again." >&2
        exit 1
    fi
fi

built=()
for kind in gpu cpu mlflow; do
    if [ -n "$only" ] && [ "$only" != "$kind" ]; then continue; fi
    case "$kind" in
        gpu) tag=$image_gpu folder=runtime-gpu ;;
        cpu) tag=$image_cpu folder=runtime-cpu ;;
        mlflow) tag=$image_mlflow folder=mlflow ;;
    esac
    if [ "$tag" = - ]; then continue; fi  # mlflow.image "": the chart's server runs the CPU image
    run "$engine" build \
        --file "$root/images/$folder/Dockerfile" \
        --tag "$tag" \
        --build-arg "VERSION=$version" \
        ${extra[@]+"${extra[@]}"} \
        "$root"
    built+=("$tag")
done
if [ "$push" = 1 ]; then
    for tag in "${built[@]}"; do run "$engine" push "$tag"; done
fi
if [ "$dry_run" = 1 ]; then
    echo "images: dry run, nothing was built; the commands above build ${built[*]}"
else
    echo "images: built ${built[*]}$([ "$push" = 1 ] && echo ' and pushed them')"
fi
