"""report_to: mlflow — one MLflow run per training run, its params the resolved config.

The store is MLFLOW_TRACKING_URI when the user has set it (a server, a database), else a local file
store in output_dir/mlruns (read it with `mlflow ui --backend-store-uri <output_dir>/mlruns`), so a
run never needs a network. MLflow 3 keeps its file store only on request (MLFLOW_ALLOW_FILE_STORE):
a file store is what a user asks for here, by choosing it or by setting no other."""
from __future__ import annotations

import logging
import os
import time
from pathlib import Path

from ..config.errors import ConfigError

log = logging.getLogger("ember")
MAX_PARAM_CHARS = 6000  # MLflow refuses longer parameter values


class MlflowRun:
    def __init__(self, cfg, run_name: str):
        try:
            from mlflow.tracking import MlflowClient
        except ImportError:
            raise ConfigError("report_to mlflow needs the mlflow package: pip install mlflow-skinny") from None
        uri = os.environ.get("MLFLOW_TRACKING_URI") or (Path(cfg.output_dir).absolute() / "mlruns").as_uri()
        if uri.startswith("file:") or "://" not in uri:
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        self.client = MlflowClient(tracking_uri=uri)
        experiment = os.environ.get("MLFLOW_EXPERIMENT_NAME", "ember")
        found = self.client.get_experiment_by_name(experiment)
        experiment_id = found.experiment_id if found else self.client.create_experiment(experiment)
        self.run_id = self.client.create_run(experiment_id, run_name=run_name).info.run_id
        self.uri = uri
        from mlflow.entities import Param
        params = [Param(key, str(value)[:MAX_PARAM_CHARS]) for key, value in cfg.to_dict().items() if value is not None]
        for start in range(0, len(params), 100):  # MLflow takes at most 100 params per batch
            self.client.log_batch(self.run_id, params=params[start:start + 100])
        log.info("mlflow: run %s in %s (experiment %s)", self.run_id, uri, experiment)

    def log(self, numbers: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric
        now = int(time.time() * 1000)
        metrics = [Metric(key, float(value), now, step)
                   for key, value in numbers.items()]
        if metrics:
            self.client.log_batch(self.run_id, metrics=metrics)

    def close(self) -> None:
        self.client.set_terminated(self.run_id)
