"""Where a run's artifacts live (docs/design.md §5): :class:`RunLayout` alone builds every object key, and the
names below are the only definition of the artifact names a shadow's local work folder mirrors.

::

    <fp>/pool.parquet, <fp>/member.npy          sealed one by one by the key-scoped marker <fp>/COMPLETE
    <fp>/base-model/…                           the demo's locally built tiny model (sealed prefix)
    <fp>/shadows/<id>/ckpt-<step>/adapter/…     one sealed prefix per checkpoint (<…>/ckpt-<step>/COMPLETE)
    <fp>/shadows/<id>/train_log.json
    <fp>/shadows/<id>/resume/…                  trainer state of the latest checkpoint (deleted once scored)
    <fp>/shadows/<id>/scores.npz
    <fp>/shadows/<id>/COMPLETE                  written last by the score task: the whole shadow is done
    <fp>/aggregate-v<N>/<evaluation fp>/…       sealed prefix (N: OUTPUTS_FORMAT)
    <fp>/report-v<N>/<evaluation fp>/…          sealed prefix
    <fp>/quarantine/<time>-<id>/…               damaged objects, moved aside (never deleted) when found
"""

from __future__ import annotations

import hashlib
import json
import re
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from memaudit.errors import MemauditError
from memaudit.store.base import ObjectStore
from memaudit.store.seal import MARKER

CHECKPOINT_PREFIX = "ckpt-"  # ckpt-<step>: one checkpoint, in the store and in a local work folder
ADAPTER_DIR = "adapter"  # the LoRA weights of a checkpoint
TRAINER_STATE = "trainer_state.pt"  # optimizer, scheduler and history of the latest checkpoint
TRAIN_LOG = "train_log.json"
SCORES = "scores.npz"
_RESUME_INFO = "state.json"
_FINGERPRINT = re.compile(r"^[0-9A-Za-z][0-9A-Za-z_.-]*$")
_CHECKPOINT = re.compile(rf"^{CHECKPOINT_PREFIX}(\d+)$")

OUTPUTS_FORMAT = 3  # of the aggregate's and the report's files: bump when they change (older ones are not reused)


def _check_fingerprint(value: str, what: str) -> str:
    if not isinstance(value, str) or not _FINGERPRINT.match(value):
        raise MemauditError(f"invalid {what} {value!r}", "use the hex digest from ExperimentConfig.fingerprint()")
    return value


def _check_index(value: int, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise MemauditError(f"invalid {what} {value!r}", f"pass the {what} as an integer >= 0")
    return value


def checkpoint_name(step: int) -> str:
    """``ckpt-<step>``."""
    return f"{CHECKPOINT_PREFIX}{_check_index(step, 'checkpoint step')}"


def checkpoint_step(name: str) -> int | None:
    """The step of a ``ckpt-<step>`` name, else None."""
    match = _CHECKPOINT.match(name)
    return int(match.group(1)) if match else None


@dataclass(frozen=True)
class RunLayout:
    """Keys of one configuration's artifacts (all under its fingerprint)."""

    fingerprint: str

    def __post_init__(self) -> None:
        _check_fingerprint(self.fingerprint, "fingerprint")

    @property
    def root(self) -> str:
        return self.fingerprint

    @property
    def pool(self) -> str:
        return f"{self.root}/pool.parquet"

    @property
    def member(self) -> str:
        return f"{self.root}/member.npy"

    @property
    def base_model(self) -> str:
        """Prefix of the demo's tiny base model (saved with save_pretrained)."""
        return f"{self.root}/base-model"

    def shadow(self, shadow: int) -> str:
        return f"{self.root}/shadows/{_check_index(shadow, 'shadow id')}"

    def checkpoint(self, shadow: int, step: int) -> str:
        return f"{self.shadow(shadow)}/{checkpoint_name(step)}"

    def adapter(self, shadow: int, step: int) -> str:
        return f"{self.checkpoint(shadow, step)}/{ADAPTER_DIR}"

    def train_log(self, shadow: int) -> str:
        return f"{self.shadow(shadow)}/{TRAIN_LOG}"

    def resume(self, shadow: int) -> str:
        """Prefix of the trainer state a killed fine-tune resumes from."""
        return f"{self.shadow(shadow)}/resume"

    def scores(self, shadow: int) -> str:
        return f"{self.shadow(shadow)}/{SCORES}"

    def population(self, evaluation_fingerprint: str, missing: list[int] = ()) -> str:
        """The key of an aggregate over the whole population (the evaluation fingerprint) or over all but the
        ``missing`` shadows (``<evaluation fp>-without-<digest of their ids>``)."""
        if not missing:
            return evaluation_fingerprint
        digest = hashlib.sha256(",".join(map(str, sorted(missing))).encode()).hexdigest()[:8]
        return f"{evaluation_fingerprint}-without-{digest}"

    def aggregate(self, evaluation_fingerprint: str, name: str = "") -> str:
        """The aggregate's prefix for these evaluation settings, or the key of its output ``name``."""
        return self._outputs("aggregate", evaluation_fingerprint, name)

    def prediction(self, variant: str, name: str = "") -> str:
        """The prefix of one early-warning prediction (``variant``: a digest of its settings), or its file ``name``."""
        prefix = f"{self.root}/predict/{_check_fingerprint(variant, 'prediction variant')}"
        return f"{prefix}/{name}" if name else prefix

    def quarantine(self, key: str, stamp: str) -> str:
        """Where ``key`` (or prefix), found damaged at ``stamp``, is moved aside."""
        return f"{self.root}/quarantine/{_check_fingerprint(stamp, 'quarantine stamp')}/{key[len(self.root) + 1 :]}"

    def report(self, evaluation_fingerprint: str, name: str = "") -> str:
        """The report's prefix for these evaluation settings, or the key of its file ``name``."""
        return self._outputs("report", evaluation_fingerprint, name)

    def _outputs(self, kind: str, evaluation_fingerprint: str, name: str) -> str:
        fingerprint = _check_fingerprint(evaluation_fingerprint, "evaluation fingerprint")
        prefix = f"{self.root}/{kind}-v{OUTPUTS_FORMAT}/{fingerprint}"
        return f"{prefix}/{name}" if name else prefix


class RunStorage:
    """A :class:`RunLayout` bound to a store: sealed single files, resumable checkpoints, shadow completion."""

    def __init__(self, store: ObjectStore, fingerprint: str):
        self.store = store
        self.layout = RunLayout(fingerprint)

    def __repr__(self) -> str:
        return f"RunStorage({self.store!r}, {self.layout.fingerprint!r})"

    def put_sealed_file(self, key: str, path: str | Path) -> str:
        """Upload one file and list it in its folder's key-scoped COMPLETE marker (e.g. pool.parquet)."""
        self.store.put_file(key, path)
        self.store.write_complete(key.rsplit("/", 1)[0], [key])
        return self.store.uri(key)

    def upload_checkpoint(self, shadow: int, step: int, adapter_dir: str | Path) -> str:
        """Upload one checkpoint's adapter folder and seal ``ckpt-<step>``; leftovers of a killed upload are
        replaced. Returns the checkpoint prefix URI. A checkpoint that is already complete raises (skip it instead).
        """
        prefix = self.layout.checkpoint(shadow, step)
        if not self.store.is_complete(prefix) and self.store.list_keys(prefix):
            self.store.delete_prefix(prefix)
        self.store.put_dir(self.layout.adapter(shadow, step), adapter_dir)
        self.store.write_complete(prefix)
        return self.store.uri(prefix)

    def stored_checkpoints(self, shadow: int) -> list[int]:
        """Steps of this shadow's complete checkpoints, ascending (where a killed fine-tune resumes from)."""
        shadow_prefix = self.layout.shadow(shadow) + "/"
        steps = []
        for key in self.store.list_keys(self.layout.shadow(shadow)):
            name, _, rest = key[len(shadow_prefix) :].partition("/")
            if rest == MARKER and (step := checkpoint_step(name)) is not None:
                steps.append(step)
        return sorted(steps)

    def download_checkpoints(
        self, shadow: int, local_dir: str | Path, steps: list[int] | None = None
    ) -> dict[int, Path]:
        """Download (verified) the adapters of the complete checkpoints (all, or ``steps``) to
        ``local_dir/ckpt-<step>/adapter``; returns {step: adapter folder}.
        """
        stored = self.stored_checkpoints(shadow)
        wanted = stored if steps is None else list(steps)
        missing = sorted(set(wanted) - set(stored))
        if missing:
            raise MemauditError(
                f"checkpoints {missing} of shadow {shadow} are not complete in {self.store.uri(self.layout.root)}",
                "run (or resume) the finetune task of that shadow first",
            )
        out: dict[int, Path] = {}
        for step in wanted:
            target = Path(local_dir) / checkpoint_name(step) / ADAPTER_DIR
            self.store.get_dir(self.layout.adapter(shadow, step), target, verify=True)
            out[step] = target
        return out

    def save_resume_state(self, shadow: int, step: int, state_file: str | Path) -> None:
        """Store the trainer state of checkpoint ``step`` (replacing the previous one)."""
        prefix = self.layout.resume(shadow)
        self.store.put_file(f"{prefix}/{TRAINER_STATE}", state_file)
        self.store.put_bytes(f"{prefix}/{_RESUME_INFO}", json.dumps({"step": step}).encode())

    def load_resume_state(self, shadow: int, dest: str | Path) -> tuple[int, Path] | None:
        """(step, local file) of the stored trainer state, or None when there is none."""
        prefix = self.layout.resume(shadow)
        if not self.store.exists(f"{prefix}/{_RESUME_INFO}"):
            return None
        step = json.loads(self.store.get_bytes(f"{prefix}/{_RESUME_INFO}", verify=False))["step"]
        return step, self.store.get_file(f"{prefix}/{TRAINER_STATE}", dest, verify=False)

    def drop_resume_state(self, shadow: int) -> None:
        if self.store.list_keys(self.layout.resume(shadow)):
            self.store.delete_prefix(self.layout.resume(shadow))

    def set_aside(self, prefix: str, keys: list[str] | None = None) -> str:
        """Move a damaged prefix (or only ``keys`` of it) to the run's quarantine; returns where it went."""
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + "-" + uuid.uuid4().hex[:6]
        dest = self.layout.quarantine(prefix, stamp)
        self.store.move_aside(prefix, dest, keys)
        return self.store.uri(dest)

    def shadow_complete(self, shadow: int) -> bool:
        """Whether the shadow's outputs (checkpoints and scores) are sealed: finetune and score can be skipped."""
        return self.store.is_complete(self.layout.shadow(shadow))

    def seal_shadow(self, shadow: int) -> dict[str, Any]:
        """Write the shadow's COMPLETE marker (after scores.npz): lists every checkpoint file and the scores."""
        if not self.store.exists(self.layout.scores(shadow)):
            raise MemauditError(
                f"{self.store.uri(self.layout.scores(shadow))} is missing", "run the score task before sealing"
            )
        return self.store.write_complete(self.layout.shadow(shadow))
