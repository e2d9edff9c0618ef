"""Where metrics go: tensorboard events on request, plain progress lines off a terminal."""
from pathlib import Path

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator


def test_tensorboard_events_hold_the_logged_scalars(make_config, train):
    cfg = make_config(report_to="tensorboard", max_steps=4, logging_steps=2, val_size=0.1, eval_steps=2)
    train(cfg)
    logdir = Path(cfg.output_dir) / "tensorboard"
    assert any(logdir.iterdir()), "no event file written"
    events = EventAccumulator(str(logdir))
    events.Reload()
    tags = events.Tags()["scalars"]
    assert {"loss", "lr", "grad_norm", "eval_loss"} <= set(tags)
    assert [e.step for e in events.Scalars("loss")] == [2, 4]


def test_progress_is_plain_lines_when_stdout_is_not_a_terminal(make_config, train, capsys):
    train(make_config(max_steps=4, logging_steps=2, disable_tqdm=False))
    out = capsys.readouterr().out
    lines = [line for line in out.splitlines() if line.startswith("step ")]
    assert [line.split()[1] for line in lines] == ["2/4", "4/4"]
    assert all("loss" in line and "lr" in line and "tok/s" in line and "eta" in line for line in lines)


def test_mlflow_file_store_holds_the_logged_metrics_and_the_config(make_config, train, monkeypatch):
    from mlflow.tracking import MlflowClient

    from conftest import read_metrics
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    cfg = make_config(report_to="mlflow", max_steps=4, logging_steps=2, val_size=0.1, eval_steps=2, run_name="tiny-mlflow")
    train(cfg)
    store = Path(cfg.output_dir) / "mlruns"
    assert store.is_dir(), "the default store is a file store in output_dir"
    client = MlflowClient(tracking_uri=store.absolute().as_uri())
    (run,) = client.search_runs([client.get_experiment_by_name("ember").experiment_id])
    assert run.info.run_name == "tiny-mlflow" and run.info.status == "FINISHED"
    assert float(run.data.params["learning_rate"]) == cfg.learning_rate
    jsonl = {r["step"]: r for r in read_metrics(Path(cfg.output_dir)) if "loss" in r}
    history = client.get_metric_history(run.info.run_id, "loss")
    assert [(m.step, m.value) for m in history] == [(step, r["loss"]) for step, r in sorted(jsonl.items())]
    assert [m.step for m in client.get_metric_history(run.info.run_id, "eval_loss")] == [2, 4]
