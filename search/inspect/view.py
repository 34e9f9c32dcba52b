"""Read access to one stored study: its trials, front, profile, space, teacher, artifacts and task.

`StudyData` is what the inspection steps (front table, report, export, verification, held-out scoring)
read; `search.inspect.api.StudyView` adds the actions on top of it (`export`, `report`, `save_front`), so
these modules never import the API that calls them.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from search.errors import UserError
from search.inspect.front import FRONT_COLUMNS, frame
from search.study.pareto import front_numbers
from search.study.record import (
    S_ARTIFACTS,
    S_HAS_TEST,
    S_LAYERS,
    S_METRIC,
    S_PROFILE,
    S_REFERENCE_ONNX,
    S_SENSITIVITY,
    S_SPACE,
    S_TASK,
    S_TEACHER,
    S_TEST_SCORES,
    TrialRecord,
    metric_percent,
)
from search.utils.atomic import atomic_path

if TYPE_CHECKING:  # optuna/pandas load only when a study is opened
    import optuna
    import pandas as pd

    from search.config import DeviceProfile, SearchSpace

ARTIFACTS_NAME = "artifacts"


@dataclass(frozen=True)
class StudyData:
    """One study as stored: its front, trials, profile, space and teacher, artifacts and task."""

    name: str
    study: optuna.Study
    folder: Path  # results/<study>: reference.onnx, front.csv, report.html
    results: Path
    storage_url: str = ""

    # cached_property writes the instance __dict__ directly, so it works on a frozen dataclass.
    @functools.cached_property
    def trials(self) -> list[TrialRecord]:
        scores = self.attrs.get(S_TEST_SCORES) or {}
        return [TrialRecord.from_trial(t, scores) for t in self.study.get_trials(deepcopy=False)]

    @functools.cached_property
    def all_trials(self) -> pd.DataFrame:
        """Every trial (the front's columns plus state, on_front, fail_reason): what plots draw."""
        return frame(self.trials, front_numbers(self.study), self.teacher, include_all=True,
                     space=self.attrs.get(S_SPACE), percent=self.percent)

    @functools.cached_property
    def front(self) -> pd.DataFrame:
        df = self.all_trials
        front = df[df["on_front"]].sort_values(["latency_ms", "trial"], ignore_index=True)
        return front[list(FRONT_COLUMNS)]

    @property
    def attrs(self) -> dict[str, Any]:
        return self.study.user_attrs

    @functools.cached_property
    def profile(self) -> DeviceProfile:
        from search.config import DeviceProfile

        # JSON mode: the stored dump has lists where the strict models want tuples.
        return DeviceProfile.model_validate_json(json.dumps(self._attr(S_PROFILE)))

    @functools.cached_property
    def space(self) -> SearchSpace:
        from search.config import SearchSpace

        return SearchSpace.model_validate_json(json.dumps(self._attr(S_SPACE)))

    @property
    def seeded(self) -> pd.DataFrame:
        """Sensitivity-allocated plans: predicted vs measured latency and accuracy (`search.inspect.seeded`)."""
        from search.inspect.seeded import seeded_table

        return seeded_table(self.trials)

    @property
    def sensitivity(self) -> pd.DataFrame:
        """Each unit changed alone on the teacher (`--seed-plans`): accuracy cost (points) and latency gain
        (share of the teacher's); empty for a study run without it."""
        import pandas as pd

        cols = ["unit", "kind", "value", "accuracy_drop", "latency_saved_frac"]
        return pd.DataFrame(self.attrs.get(S_SENSITIVITY) or [], columns=cols)

    @property
    def units(self) -> dict[str, Any]:
        """The search units as the run used them: {"pruning": {unit: layers}, "quantization": {unit: layers},
        "pruning_skipped": why the model has no pruning axis, "" when it has one}."""
        from search.study.sampling import SearchLayers

        layers = SearchLayers.from_dict(self._attr(S_LAYERS))
        return {"pruning": layers.prune_units(self.space.pruning.granularity),
                "quantization": layers.bit_units(self.space.quantization.granularity),
                "pruning_skipped": layers.pruning_skipped}

    @property
    def teacher(self) -> dict[str, Any]:
        return dict(self.attrs.get(S_TEACHER, {}))

    @property
    def metric_name(self) -> str:
        """The name of what the study's accuracy is: "top-1" unless the task gave a metric."""
        return str((self.attrs.get(S_METRIC) or {}).get("name", "top-1"))

    @property
    def percent(self) -> bool:
        """Whether the study's accuracy is a share shown in percent (top-1, the default) or a metric in its
        own unit (search.metrics)."""
        return metric_percent(self.attrs)

    @property
    def has_test(self) -> bool:
        """False when the task has no held-out split (its accuracies are the selection set's)."""
        return bool(self.attrs.get(S_HAS_TEST, True))

    @property
    def teacher_test(self) -> dict[str, Any]:
        """The teacher's held-out score ({"accuracy", "n"}), once the final scoring step ran."""
        return dict((self.attrs.get(S_TEST_SCORES) or {}).get("teacher") or {})

    @property
    def task_spec(self) -> str:
        return str(self._attr(S_TASK))

    def _attr(self, key: str) -> Any:
        if key not in self.attrs:
            raise UserError(f"study '{self.name}' has no '{key}' attribute: it was not written by hwsearch run "
                            "(or the run did not get past its setup)")
        return self.attrs[key]

    def record(self, number: int) -> TrialRecord:
        """The trial with this number; a one-line error naming the valid range when there is none."""
        by_number = {r.number: r for r in self.trials}
        if number not in by_number:
            span = f"0..{max(by_number)}" if by_number else "none: the study has no trials"
            raise UserError(f"study '{self.name}' has no trial {number} (trials: {span})")
        return by_number[number]

    @functools.cached_property
    def artifacts_dir(self) -> Path:
        """The artifact store folder: results/<study>/artifacts, else the study's S_ARTIFACTS (as given,
        then relative to the study folder)."""
        given = self.attrs.get(S_ARTIFACTS)
        candidates = [self.folder / ARTIFACTS_NAME]
        if given:
            candidates += [Path(given), self.folder / given]
        for c in candidates:
            if c.is_dir():
                return c
        raise UserError(f"study '{self.name}': artifact folder not found (looked in "
                        f"{', '.join(str(c) for c in candidates)})")

    def download_artifact(self, artifact_id: str, target: Path) -> None:
        """Copy one trial artifact (an ONNX model, a plan) to `target`; a reader never sees half of it."""
        import optuna

        store = optuna.artifacts.FileSystemArtifactStore(str(self.artifacts_dir))
        try:
            with atomic_path(target) as tmp:
                optuna.artifacts.download_artifact(artifact_store=store, file_path=str(tmp), artifact_id=artifact_id)
        except Exception as e:
            raise UserError(f"cannot read artifact {artifact_id} from {self.artifacts_dir}: {e}") from None

    @property
    def reference_onnx(self) -> Path | None:
        rel = self.attrs.get(S_REFERENCE_ONNX)
        path = self.folder / rel if rel else None
        return path if path is not None and path.is_file() else None

    def load_task(self) -> Any:
        """The task the study ran on (built-in teachers come from the results folder's cache)."""
        from search.tasks import load_task

        return load_task(self.task_spec, results_dir=self.results, progress=False)
