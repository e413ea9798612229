"""Read cotlab's tracking files with the tools' own readers; print one JSON line.

    tracking_read.py tensorboard DIR          -> {tag: [[step, value], ...]} (EventAccumulator)
    tracking_read.py mlflow MLRUNS EXPERIMENT -> [{run_id, name, status, params, tags, metrics}]
                                                 (mlflow.search_runs + MlflowClient.get_metric_history)
"""

import json
import os
import sys


def tensorboard(path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(path)
    acc.Reload()
    return {tag: [[e.step, e.value] for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def mlflow_runs(root, experiment):
    # mlflow 3 reads a file store only when told to (it is in maintenance mode there).
    os.environ["MLFLOW_ALLOW_FILE_STORE"] = "true"
    import mlflow
    from mlflow.tracking import MlflowClient

    uri = "file://" + os.path.abspath(root)
    mlflow.set_tracking_uri(uri)
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return None
    out = []
    for run in mlflow.search_runs(experiment_ids=[exp.experiment_id], output_format="list"):
        metrics = {
            key: [[m.step, m.value] for m in client.get_metric_history(run.info.run_id, key)]
            for key in run.data.metrics
        }
        out.append(
            {
                "run_id": run.info.run_id,
                "experiment_id": exp.experiment_id,
                "name": run.info.run_name,
                "status": run.info.status,
                "params": run.data.params,
                "tags": run.data.tags,
                "metrics": metrics,
            }
        )
    return out


if __name__ == "__main__":
    if sys.argv[1] == "tensorboard":
        print(json.dumps(tensorboard(sys.argv[2])))
    else:
        print(json.dumps(mlflow_runs(sys.argv[2], sys.argv[3])))
