# clientflow on the official Airflow image: Airflow, providers and Cosmos from our lock,
# dbt in its own virtualenv (it would downgrade Airflow's protobuf), the dbt manifest built at
# image build time so DAG parsing never runs dbt.
FROM apache/airflow:3.3.2-python3.11

ENV CLIENTFLOW_HOME=/opt/clientflow \
    CLIENTFLOW_DBT_EXECUTABLE=/opt/dbt-venv/bin/dbt \
    AIRFLOW__CORE__DAGS_FOLDER=/opt/clientflow/dags \
    AIRFLOW__CORE__PLUGINS_FOLDER=/opt/clientflow/plugins \
    AIRFLOW__CORE__LOAD_EXAMPLES=False \
    AIRFLOW__COSMOS__ENABLE_TELEMETRY=False \
    PYTHONPATH=/opt/clientflow

USER root
RUN python -m venv /opt/dbt-venv && chown -R airflow: /opt/dbt-venv && mkdir -p /opt/clientflow && chown airflow: /opt/clientflow
USER airflow

COPY --chown=airflow:root requirements.txt requirements-dbt.txt /opt/clientflow/
RUN pip install --no-cache-dir -r /opt/clientflow/requirements.txt \
 && /opt/dbt-venv/bin/pip install --no-cache-dir -r /opt/clientflow/requirements-dbt.txt

COPY --chown=airflow:root clientflow /opt/clientflow/clientflow
COPY --chown=airflow:root client_extractor /opt/clientflow/client_extractor
COPY --chown=airflow:root dags /opt/clientflow/dags
COPY --chown=airflow:root plugins /opt/clientflow/plugins
COPY --chown=airflow:root include /opt/clientflow/include
COPY --chown=airflow:root dbt /opt/clientflow/dbt
RUN cd /opt/clientflow/dbt && /opt/dbt-venv/bin/dbt parse --profiles-dir . --quiet
