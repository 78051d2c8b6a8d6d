"""Requirement lines for the runtime images, read from pyproject.toml (the one place versions are pinned).

The Dockerfiles copy only pyproject.toml and this file before installing dependencies, so editing the source
does not invalidate the (large) dependency layers. Standard library only: it runs before anything is installed.

    python requirements.py PYPROJECT [--extra gpu] [--with boto3] [--exclude torch]   # requirement lines
    python requirements.py PYPROJECT --only mlflow --only boto3   # just these pins (the MLflow server image)
    python requirements.py PYPROJECT --pin torch     # the pinned version, e.g. 2.13.0
    python requirements.py PYPROJECT --check torch   # exit 1 unless the installed torch is that version
"""

from __future__ import annotations

import argparse
import re
import sys
import tomllib
from importlib import metadata
from pathlib import Path

_NAME = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)")
_PIN = re.compile(r"==\s*([^\s;,]+)")


def normalize(name: str) -> str:
    """PEP 503 name: lower case, runs of '-', '_' and '.' as one '-'."""
    return re.sub(r"[-_.]+", "-", name).lower()


def requirement_name(line: str) -> str:
    match = _NAME.match(line)
    if not match:
        raise ValueError(f"not a requirement: {line!r}")
    return normalize(match.group(1))


def read_requirements(pyproject: Path) -> tuple[list[str], dict[str, list[str]]]:
    """The ``[project]`` dependencies and optional-dependency groups of ``pyproject``."""
    project = tomllib.loads(pyproject.read_text())["project"]
    return list(project.get("dependencies", [])), dict(project.get("optional-dependencies", {}))


def select(pyproject: Path, *, extras: list[str] = (), with_: list[str] = (), exclude: list[str] = ()) -> list[str]:
    """Runtime dependencies, plus the ``extras`` groups and the named ``with_`` requirements of any group."""
    deps, groups = read_requirements(pyproject)
    for extra in extras:
        if extra not in groups:
            raise SystemExit(f"error: no optional-dependency group {extra!r} in {pyproject}")
        deps += groups[extra]
    everything = {requirement_name(line): line for group in groups.values() for line in group}
    for name in with_:
        if normalize(name) not in everything:
            raise SystemExit(f"error: {name!r} is not pinned in any optional-dependency group of {pyproject}")
        deps.append(everything[normalize(name)])
    skip = {normalize(name) for name in exclude}
    seen: set[str] = set()
    out = []
    for line in deps:
        name = requirement_name(line)
        if name not in skip and name not in seen:
            seen.add(name)
            out.append(line)
    return out


def only(pyproject: Path, names: list[str]) -> list[str]:
    """The pinned requirement lines of ``names`` alone, from the dependencies or any optional group."""
    deps, groups = read_requirements(pyproject)
    everything = {requirement_name(line): line for line in deps + [line for group in groups.values() for line in group]}
    missing = [name for name in names if normalize(name) not in everything]
    if missing:
        raise SystemExit(f"error: {missing[0]!r} is not a requirement in {pyproject}")
    return [everything[normalize(name)] for name in names]


def pinned_version(pyproject: Path, name: str) -> str:
    """The exact ``==`` version pinned for ``name`` among the dependencies and extras."""
    deps, groups = read_requirements(pyproject)
    for line in deps + [line for group in groups.values() for line in group]:
        if requirement_name(line) == normalize(name):
            match = _PIN.search(line)
            if not match:
                raise SystemExit(f"error: {name} is not pinned with == in {pyproject} ({line!r})")
            return match.group(1)
    raise SystemExit(f"error: {name} is not a dependency in {pyproject}")


def check_installed(pyproject: Path, name: str) -> str | None:
    """None when the installed ``name`` is the pinned version (a local label such as +cu130 is ignored)."""
    wanted = pinned_version(pyproject, name)
    try:
        installed = metadata.version(name)
    except metadata.PackageNotFoundError:
        return f"{name} is not installed (pyproject.toml pins {wanted})"
    if installed.split("+", 1)[0] != wanted:
        return f"installed {name} {installed} differs from the pin {wanted} in pyproject.toml"
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("pyproject", type=Path)
    parser.add_argument("--extra", action="append", default=[], help="add an optional-dependency group")
    parser.add_argument("--with", dest="with_", action="append", default=[], help="add one pinned requirement")
    parser.add_argument("--exclude", action="append", default=[], help="leave this requirement out")
    parser.add_argument("--only", action="append", default=[], help="print just this pinned requirement")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--pin", metavar="NAME", help="print the version pinned for NAME")
    mode.add_argument("--check", metavar="NAME", help="fail unless the installed NAME is the pinned version")
    args = parser.parse_args(argv)
    if args.pin:
        print(pinned_version(args.pyproject, args.pin))
    elif args.check:
        problem = check_installed(args.pyproject, args.check)
        if problem:
            print(f"error: {problem}", file=sys.stderr)
            return 1
        print(f"{args.check} matches pyproject.toml")
    elif args.only:
        print("\n".join(only(args.pyproject, args.only)))
    else:
        print("\n".join(select(args.pyproject, extras=args.extra, with_=args.with_, exclude=args.exclude)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
