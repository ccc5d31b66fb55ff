"""Where the MLflow UI opens on a glint-track experiment: its runs table with the columns a user compares.

MLflow 3's UI opens an experiment on its GenAI overview unless the browser's GenAI / Model training switch
(or the link's `workflowType`) says otherwise, and its runs table shows no metric columns until chosen. A
link can carry both: `workflowType=machine_learning`, and `viewStateShareKey` naming a view (columns,
sort order) stored as an experiment tag, MLflow's own "shared view". Every experiment glint-track trains in
holds that view, and the links glint-track prints open it.
"""

from __future__ import annotations

import json
from urllib.parse import urlencode

from mlflow.tracking import MlflowClient

VIEW_KEY = "glint-track"
VIEW_TAG = f"mlflow.sharedViewState.{VIEW_KEY}"
#: Runs-table columns (MLflow's `<group>.`name`` keys), left to right. `glint_track.epochs` (a tag) is how
#: many epochs a run has trained: its `epochs` param keeps the first value, resumes change it.
COLUMNS = [
    "metrics.`val_f1`",
    "metrics.`val_loc_err_mean`",
    "metrics.`val_loss`",
    "params.`loss`",
    "tags.`glint_track.epochs`",
    "attributes.`Models`",
]
_VIEW = {"selectedColumns": COLUMNS, "orderByKey": "attributes.start_time", "orderByAsc": False}


def store_runs_view(client: MlflowClient, experiment_id: str) -> None:
    """Keep glint-track's runs-table view in the experiment (once; a user's own edits to it stay)."""
    if VIEW_TAG not in client.get_experiment(experiment_id).tags:
        client.set_experiment_tag(experiment_id, VIEW_TAG, json.dumps(_VIEW))


def runs_table_url(ui: str, experiment_id: str) -> str:
    """The experiment's runs table, in the training view, with glint-track's columns."""
    query = urlencode({"workflowType": "machine_learning", "viewStateShareKey": VIEW_KEY})
    return f"{ui.rstrip('/')}/#/experiments/{experiment_id}/runs?{query}"


def run_url(ui: str, experiment_id: str, run_id: str) -> str:
    return f"{ui.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}?workflowType=machine_learning"
