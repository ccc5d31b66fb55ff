"""MLflow: the tracking store, a run and its spool, fetching checkpoints, and the logged model."""
