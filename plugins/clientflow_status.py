"""The clientflow status page in the Airflow UI (clientflow.operations.status_page): an Airflow 3
plugin that mounts the page's FastAPI app at /clientflow and adds it to the UI's navigation."""

from airflow.plugins_manager import AirflowPlugin

from clientflow.operations.status_page import create_app


class ClientflowStatusPlugin(AirflowPlugin):
    name = "clientflow_status"
    fastapi_apps = [{"app": create_app(), "url_prefix": "/clientflow", "name": "clientflow status"}]
    external_views = [{"name": "Clientflow status", "href": "/clientflow/status", "destination": "nav",
                       "category": "browse", "url_route": "clientflow-status"}]
