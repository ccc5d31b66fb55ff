#!/usr/bin/env bash
# Entry points of the MLproject: `bash mlproject.sh COMMAND name=value …` runs `glint-track COMMAND` with
# each parameter that has a value passed as GLINT_TRACK_<COMMAND>_<NAME>. A parameter left empty is not
# passed at all, so it takes glint-track's default or, on a resume, the checkpoint's setting.
set -euo pipefail
command=$1
shift
prefix=GLINT_TRACK_$(echo "$command" | tr '[:lower:]' '[:upper:]')
python=python
# `mlflow run` from a shell where the README's .venv is not active: use the venv's interpreter
"$python" -c "import torch, mlflow" 2>/dev/null || python=.venv/bin/python
h5="" resume="" known="" unknown=""
while [ $# -gt 0 ]; do
    arg=$1
    shift
    if [ "${arg#--}" != "$arg" ]; then  # `mlflow run` appends a -P the MLproject does not declare as `--name value`
        unknown=${unknown:-${arg#--}}
        [ $# -eq 0 ] || [ "${1#--}" != "$1" ] || shift
        continue
    fi
    name=${arg%%=*}
    value=${arg#*=}
    known="${known:+$known, }$name"
    [ -n "$value" ] || continue
    case $name in
        no_save_optimizer)
            case $value in
                true | True | TRUE | 1 | yes) export "${prefix}_SAVE_OPTIMIZER=false" ;;
                false | False | FALSE | 0 | no) export "${prefix}_SAVE_OPTIMIZER=true" ;;
                *) echo "Error: -P no_save_optimizer=$value: use true or false" >&2 && exit 2 ;;
            esac ;;
        resume_run_id) export "${prefix}_RESUME=$value" && resume=$value ;;
        *) export "${prefix}_$(echo "$name" | tr '[:lower:]' '[:upper:]')=$value" && { [ "$name" != h5 ] || h5=$value; } ;;
    esac
done
if [ -n "$unknown" ]; then  # MLflow would run without it: a typed setting must apply or be refused
    echo "Error: -P $unknown is not a parameter of this project's $command entry point; use one of: $known" >&2
    exit 2
fi
export GLINT_TRACK_PROJECT_PARAMETERS=$known  # errors name the -P parameter, not the option it sets
if [ "$command" = train ] && [ -z "$h5" ] && [ -z "$resume" ]; then  # the demo: built-in synthetic data
    [ -f demo.h5 ] || "$python" -m glint_track synth --out demo.h5
    export GLINT_TRACK_TRAIN_H5=demo.h5
fi
exec "$python" -m glint_track "$command"
