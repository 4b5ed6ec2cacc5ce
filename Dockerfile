# clientflow on the official Airflow image: the layout `make install` builds in the clone, under
# /opt/clientflow. Airflow, providers and Cosmos come from our lock (requirements.txt); dbt lives in
# its own virtualenv (installed into Airflow's environment it would downgrade protobuf) at the path
# the code uses by default (.venv-dbt beside the package); the dbt manifest is built here, so
# parsing a DAG never runs dbt. One image for every Airflow service (deploy/docker-compose.yaml,
# deploy/helm/values.yaml). Not built on our development machines (they have no Docker engine):
# tests/deploy/test_dockerfile.py checks its structure instead.
#
#   docker build -t clientflow:0.1.0 .
FROM apache/airflow:3.3.2-python3.11

ENV CLIENTFLOW_DBT_EXECUTABLE=/opt/clientflow/.venv-dbt/bin/dbt \
    PYTHONPATH=/opt/clientflow \
    AIRFLOW__CORE__DAGS_FOLDER=/opt/clientflow/dags \
    AIRFLOW__CORE__PLUGINS_FOLDER=/opt/clientflow/plugins \
    AIRFLOW__CORE__LOAD_EXAMPLES=False \
    AIRFLOW__COSMOS__ENABLE_TELEMETRY=False \
    DBT_SEND_ANONYMOUS_USAGE_STATS=False \
    DO_NOT_TRACK=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# The image's own user (uid 50000, group root) owns the project; nothing after this runs as root.
USER root
RUN install -d -o airflow -g root /opt/clientflow
USER airflow

# The locks first, so code changes do not reinstall them. Naming the base image's Airflow version
# beside the lock makes pip fail, not silently swap Airflow, if the two ever disagree.
COPY --chown=airflow:root requirements.txt requirements-dbt.txt /opt/clientflow/
RUN pip install --no-cache-dir "apache-airflow==${AIRFLOW_VERSION}" -r /opt/clientflow/requirements.txt
RUN python -m venv /opt/clientflow/.venv-dbt \
 && /opt/clientflow/.venv-dbt/bin/pip install --no-cache-dir -r /opt/clientflow/requirements-dbt.txt

# The package is imported from /opt/clientflow (PYTHONPATH), not from site-packages: it finds
# include/, dbt/ and the mappings beside itself, as in the clone.
COPY --chown=airflow:root clientflow /opt/clientflow/clientflow
COPY --chown=airflow:root client_extractor /opt/clientflow/client_extractor
COPY --chown=airflow:root dags /opt/clientflow/dags
COPY --chown=airflow:root plugins /opt/clientflow/plugins
COPY --chown=airflow:root include /opt/clientflow/include
COPY --chown=airflow:root dbt /opt/clientflow/dbt
COPY --chown=airflow:root deploy/entrypoint.sh /opt/clientflow/deploy/entrypoint.sh

# dbt/target/manifest.json (and dbt's partial parse state), from the sources just copied;
# .dockerignore keeps the clone's own dbt/target out of the image.
RUN cd /opt/clientflow/dbt && /opt/clientflow/.venv-dbt/bin/dbt parse --profiles-dir . --quiet

# The official entrypoint, behind ours: beside a command that runs tasks (a Celery worker, a
# LocalExecutor's scheduler) ours starts dbt's fork server, so each dbt build is a fork of a process
# that has dbt imported (deploy/entrypoint.sh; CLIENTFLOW_DBT_FORKSERVER=off starts none).
ENTRYPOINT ["/usr/bin/dumb-init", "--", "/opt/clientflow/deploy/entrypoint.sh"]
CMD []
