"""The MLflow tags glint-track writes on a run, each named once."""

TAG_RESUMED_FROM = "glint_track.resumed_from"
TAG_INIT_FROM = "glint_track.init_from"  # a fine-tuning: the model it started from, as given to --init-from
TAG_INIT_FROM_RUN = "glint_track.init_from.run"  # and the run that model came from


TAG_DATASET_DIGEST = "glint_track.dataset.digest"  # SHA-256 of the HDF5 file a run learns from
TAG_DATASET_PATH = "glint_track.dataset.path"  # its absolute path on the training machine, where a resume looks first


TAG_OVERRIDE = "glint_track.override."  # + setting: its value on a continued run where it differs from the param


TAG_HISTORY = "glint_track.history"  # one line per resume that changed settings


TAG_SUMMARY = "glint_track.summary"  # the glint result


TAG_NOTE = "mlflow.note.content"  # the run's description in the MLflow UI


TAG_CONTINUED_IN = "glint_track.continued_in"  # on a run `mlflow run` made that another run trained in
#: MLflow 3's experiment kind: a model-training experiment. (Which view the UI opens follows the browser's
#: GenAI / Model training switch; the links glint-track prints choose it, see tracking/ui.py.)
TAG_EXPERIMENT_KIND = "mlflow.experimentKind"
TRAINING_KIND = "custom_model_development"

TAG_MODEL_EPOCH = "glint_track.epoch"  # on a logged model: the epoch of the checkpoint it packages
TAG_EPOCHS = "glint_track.epochs"  # on a run: the epochs it has trained so far (its `epochs` param keeps the first)
TAG_LOCAL_COPY = "glint_track.local_copy"  # on a run: the folder where the training machine keeps its files
TAG_TRAIN_TIME = "glint_track.train_time_s"  # on a run: seconds its processes spent, without the idle time between
