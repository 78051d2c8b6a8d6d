"""The split task: the membership matrix ``member[S, N]`` of the shadow population (from the store when drawn)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from memaudit.tasks.runtime import task
from memaudit.tasks.warm import forked


@forked
def split_task(*, config_json: str, pool_path: str, member_path: str) -> dict[str, Any]:
    """Write the membership matrix (from the store when already drawn)."""
    from memaudit.data.poolfile import read_pool, train_pool
    from memaudit.data.splits import membership_for, read_membership, write_membership

    with task("split", config_json=config_json) as t:
        n_train = len(train_pool(read_pool(pool_path)))
        draw = lambda path: write_membership(membership_for(t.cfg, n_train), path)  # noqa: E731
        if t.reuse_or_build_file(t.layout.member, Path(member_path), draw):
            t.skipped()
        member = read_membership(member_path, n_samples=n_train)
    return {"uri": t.store.uri(t.layout.member), "n_models": int(member.shape[0]), "n_samples": int(member.shape[1])}
