#!/usr/bin/env bash
# The wheels the lent GPU's image lacks for glint-track (it has no MLflow), downloaded here into the ignored .whl/ that
# benchmarks/gpu_issue28.sh installs there (device tool: carry [".whl"]). The versions are this venv's; MLflow's SQL
# store needs cryptography and cffi too (a call without them lost its run to "No module named 'cryptography'").
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_34_x86_64 --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl \
    alembic==1.20.1 \
    annotated-types==0.8.0 \
    cachetools==7.3.3 \
    cffi==2.1.1 \
    cryptography==50.0.2 \
    databricks-sdk==0.167.0 \
    fastapi==0.165.0 \
    gitdb==4.0.12 \
    gitpython==3.2.1 \
    google-auth==2.63.0 \
    greenlet==3.5.6 \
    importlib-metadata==9.1.0 \
    mako==1.4.3 \
    mlflow-skinny==3.17.2 \
    mlflow-tracing==3.17.2 \
    opentelemetry-api==1.45.2 \
    opentelemetry-proto==1.45.2 \
    opentelemetry-sdk==1.45.2 \
    opentelemetry-semantic-conventions==0.66b2 \
    pyasn1==0.6.5 \
    pyasn1-modules==0.4.2 \
    pycparser==3.12 \
    pydantic==2.14.4 \
    pydantic-core==2.50.5 \
    python-dotenv==1.2.4 \
    smmap==5.0.3 \
    sqlalchemy==2.1.9 \
    sqlparse==0.6.1 \
    starlette==1.10.0 \
    typing-inspection==0.4.5 \
    uvicorn==0.55.0
