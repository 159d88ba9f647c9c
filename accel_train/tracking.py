"""Trackers beside `metrics.jsonl`, through Accelerate's `init_trackers`/`log`, each at home in the run folder:

    tensorboard   <run>/tensorboard/   Accelerate's TensorBoardTracker     tensorboard --logdir <run>
    wandb         <run>/wandb/         Accelerate's WandBTracker           WANDB_MODE=offline: no account needed
    mlflow        <run>/mlruns/        MLflow's local file store, no server (mlflow-skinny is enough)

The Accelerator is built before the run folder exists (the folder is agreed on by all processes through it), so
each tracker is an `InRunFolder` that builds the library's tracker when `init_trackers` starts it. A resumed run
continues the same tracker run: the W&B and MLflow run ids are kept in `<run>/trackers.json`, and TensorBoard
hides any point past the restored step (`purge_step`). Only the main process logs (Accelerate's rule).
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import time
from pathlib import Path
from typing import Any

from accelerate.tracking import GeneralTracker

from .errors import UserError, closest

PACKAGES = {"tensorboard": "tensorboard", "wandb": "wandb", "mlflow": "mlflow-skinny"}  # tracker -> pip package
IDS = "trackers.json"
PROJECT = "accel_train"  # W&B project and MLflow experiment, unless WANDB_PROJECT / MLFLOW_EXPERIMENT_NAME say


def parse_names(value: str | list[str] | tuple[str, ...] | None) -> list[str]:
    """`tensorboard,wandb` or a list -> the tracker names, checked for spelling (no import)."""
    parts = value.split(",") if isinstance(value, str) else [p for item in value or () for p in str(item).split(",")]
    names = list(dict.fromkeys(p.strip().lower() for p in parts if p.strip()))
    for name in names:
        if name not in PACKAGES:
            raise UserError(f"--log-with {name}: unknown tracker.{closest(name, PACKAGES)} Choose from "
                            f"{', '.join(PACKAGES)} (several: --log-with tensorboard,wandb).")
    return names


def check_installed(names: list[str]) -> None:
    """Every requested tracker imports, or one line naming the `pip install` to run (before anything is written)."""
    import importlib

    for name in names:
        try:
            importlib.import_module(name)
        except ImportError:
            raise UserError(f"--log-with {name} needs the {PACKAGES[name]} package, which is not installed: "
                            f"pip install {PACKAGES[name]} (or pip install 'accel_train[tracking]' for all "
                            "trackers).") from None


def make_trackers(names: list[str]) -> list[InRunFolder]:
    """The trackers `names` asks for, each installed (`check_installed`), to start once the run folder exists."""
    check_installed(names)
    return [InRunFolder(name) for name in names]


def log_kwargs(kind: str) -> dict[str, dict[str, str]]:
    """`accelerator.log`'s per-tracker keywords: metrics.jsonl writes the kind, the others rename by it."""
    return {name: {"kind": kind} for name in ("jsonl", *PACKAGES)}


def epoch_view(record: dict[str, Any]) -> dict[str, Any]:
    """An epoch record as trackers get it: the epoch's train metrics as `train_epoch/...`, so that they do not land
    on the logging step's `train/loss` at the same step; `lr` and `epoch` are in the step's own points."""
    return {(f"train_epoch/{k[6:]}" if k.startswith("train/") else k): v for k, v in record.items()
            if k not in ("lr", "epoch")}


def hparams(config: dict[str, Any], prefix: str = "") -> dict[str, bool | int | float | str]:
    """A nested config as flat `a.b.c` keys of types every tracker stores (None and lists as text)."""
    flat: dict[str, bool | int | float | str] = {}
    for key, value in config.items():
        if isinstance(value, dict):
            flat.update(hparams(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value if isinstance(value, (bool, int, float, str)) else str(value)
    return flat


def logged_steps(run_dir: Path) -> dict[tuple[str, str], int]:
    """(kind, key) -> the last step metrics.jsonl holds, read before a resume truncates it: trackers logged the
    same points."""
    from .run_folder import read_metrics

    logged: dict[tuple[str, str], int] = {}
    for row in read_metrics(run_dir) if (run_dir / "metrics.jsonl").exists() else []:
        for key in row:
            logged[(row.get("kind"), key)] = max(logged.get((row.get("kind"), key), -1), row["step"] or 0)
    return logged


def _read_ids(run_dir: Path) -> dict[str, str]:
    path = run_dir / IDS
    return json.loads(path.read_text()) if path.exists() else {}


def _keep_id(run_dir: Path, name: str, run_id: str) -> None:
    ids = _read_ids(run_dir)
    if ids.get(name) != run_id:
        (run_dir / IDS).write_text(json.dumps({**ids, name: run_id}, indent=2) + "\n")


class InRunFolder(GeneralTracker):
    """A tracker built in the run folder when `init_trackers` starts it; `place` says where and from which step."""

    requires_logging_directory = False
    main_process_only = True

    def __init__(self, name: str):
        self.name = name
        super().__init__()
        self.run_dir: Path | None = None
        self.step = 0  # the restored step of a resumed run
        self.logged: dict[tuple[str, str], int] = {}  # (kind, key) -> the last step logged before this part
        self.inner: GeneralTracker | None = None

    def place(self, run_dir: Path, step: int, logged: dict[tuple[str, str], int] | None = None) -> None:
        """The run folder, the restored step, and what the run logged before it resumed (`logged_steps`)."""
        self.run_dir, self.step, self.logged = run_dir, step, logged or {}

    @property
    def tracker(self):
        return self.inner.tracker

    def start(self) -> None:
        inner = getattr(self, f"_{self.name}")()
        inner.start()
        self.inner = inner  # only a started tracker is finished: a failed start shows its own error

    def _tensorboard(self) -> GeneralTracker:
        from accelerate.tracking import TensorBoardTracker

        # purge_step: a run killed after its checkpoint logged points past it; TensorBoard hides those
        return TensorBoardTracker("tensorboard", str(self.run_dir), **({"purge_step": self.step + 1} if self.step
                                                                       else {}))

    def _wandb(self) -> GeneralTracker:
        from accelerate.tracking import WandBTracker

        run_id = _read_ids(self.run_dir).get("wandb") or secrets.token_hex(4)  # W&B ids: lower-case letters, digits
        _keep_id(self.run_dir, "wandb", run_id)
        return WandBTracker(os.environ.get("WANDB_PROJECT", PROJECT), dir=str(self.run_dir), id=run_id,
                            resume="allow", name=self.run_dir.name)

    def _mlflow(self) -> GeneralTracker:
        return MlflowFileTracker(self.run_dir, os.environ.get("MLFLOW_EXPERIMENT_NAME", PROJECT))

    def store_init_configuration(self, values: dict) -> None:
        self.inner.store_init_configuration(values)

    def log(self, values: dict, step: int | None = None, kind: str | None = None, **kwargs) -> None:
        if self.logged and self.name == "mlflow":
            # a run killed after its checkpoint logged points past it; the resumed run computes the same values
            # again, and MLflow cannot take a point back: each is sent once. (TensorBoard hides the old ones,
            # purge_step; W&B refuses a step below its last one, and an offline run loses its unflushed tail)
            values = {k: v for k, v in values.items() if (step or 0) > self.logged.get((kind, k), -1)}
            if not values:
                return
        self.inner.log(epoch_view(values) if kind == "epoch" else values, step=step, **kwargs)

    def finish(self) -> None:
        if self.inner is not None:
            self.inner.finish()


@contextlib.contextmanager
def _file_store_allowed():
    """MLflow 3 refuses its file store unless MLFLOW_ALLOW_FILE_STORE is set (it wants a database, which needs
    SQLAlchemy): set for the store's construction only, then restored."""
    before = os.environ.get("MLFLOW_ALLOW_FILE_STORE")
    os.environ["MLFLOW_ALLOW_FILE_STORE"] = "true"
    try:
        yield
    finally:
        if before is None:
            del os.environ["MLFLOW_ALLOW_FILE_STORE"]
        else:
            os.environ["MLFLOW_ALLOW_FILE_STORE"] = before


class MlflowFileTracker(GeneralTracker):
    """MLflow's file store in `<run>/mlruns`, written through one store object: no server, and no process-wide
    tracking URI or active run (Accelerate's MLflowTracker logs to the global ones, by default ./mlruns)."""

    name = "mlflow"
    requires_logging_directory = False
    main_process_only = True

    def __init__(self, run_dir: Path, experiment: str):
        super().__init__()
        self.run_dir, self.experiment = run_dir, experiment
        self.store = self.run_id = None

    @property
    def tracker(self):
        return self.store

    def start(self) -> None:
        from mlflow.store.tracking.file_store import FileStore

        with _file_store_allowed():
            self.store = FileStore(str((self.run_dir / "mlruns").resolve()))
        from mlflow.entities import RunStatus

        self.run_id = _read_ids(self.run_dir).get("mlflow")
        if self.run_id is not None:  # a resumed run: the same MLflow run, running again
            self.store.update_run_info(self.run_id, RunStatus.to_string(RunStatus.RUNNING), end_time=None,
                                       run_name=self.run_dir.name)
        else:
            found = self.store.get_experiment_by_name(self.experiment)
            experiment = found.experiment_id if found else self.store.create_experiment(self.experiment)
            run = self.store.create_run(experiment, user_id="accel_train", start_time=_now(), tags=[],
                                        run_name=self.run_dir.name)
            self.run_id = run.info.run_id
            _keep_id(self.run_dir, "mlflow", self.run_id)

    def store_init_configuration(self, values: dict) -> None:
        from mlflow.entities import Param

        known = self.store.get_run(self.run_id).data.params  # MLflow refuses to change a logged parameter
        params = [Param(k, str(v)[:6000]) for k, v in values.items() if k not in known]
        for i in range(0, len(params), 100):  # the store's limit per batch
            self.store.log_batch(self.run_id, metrics=[], params=params[i:i + 100], tags=[])

    def log(self, values: dict, step: int | None = None, **kwargs) -> None:
        from mlflow.entities import Metric

        now = _now()
        metrics = [Metric(k, float(v), now, step or 0) for k, v in values.items() if isinstance(v, (int, float))]
        self.store.log_batch(self.run_id, metrics=metrics, params=[], tags=[])

    def finish(self) -> None:
        if self.store is not None:
            from mlflow.entities import RunStatus

            self.store.update_run_info(self.run_id, RunStatus.to_string(RunStatus.FINISHED), end_time=_now(),
                                       run_name=self.run_dir.name)


def _now() -> int:
    return int(time.time() * 1000)
