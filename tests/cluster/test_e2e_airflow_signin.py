"""`mfhelm port-forward` finds out, on a real API server, whether Airflow is
behind the sign-in (the chart's webserver_config ConfigMap exists): then its
break-glass URL is under /airflow/, where Airflow answers."""

from __future__ import annotations

from chartlib import SCENARIOS, get, render

from mfhelm import portforward
from mfhelm.values import AIRFLOW_SIGNIN_CONFIG

from .handle import Cluster


def test_port_forward_sees_airflow_behind_the_sign_in(cluster: Cluster, namespace: str) -> None:
    api = cluster.api_client()
    assert portforward.airflow_behind_signin(api, namespace) is False
    cm = get(render([SCENARIOS["local-signin"]], release="mf", namespace=namespace),
             "ConfigMap", AIRFLOW_SIGNIN_CONFIG)
    cluster.core().create_namespaced_config_map(namespace, cm)
    assert portforward.airflow_behind_signin(api, namespace) is True
    [forward] = portforward.plan("mf", {"mf-webserver"}, airflow_signin=True)
    assert forward.url.startswith("http://localhost:8081/airflow/")
