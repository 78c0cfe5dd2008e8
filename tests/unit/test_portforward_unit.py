from mfhelm import portforward


def test_plan_forwards_only_present_services_in_order():
    present = {"mf-metadata", "mf-ui", "mf-ui-backend", "mf-webserver", "unrelated"}
    plan = portforward.plan("mf", present)
    assert [(f.service, f.local, f.remote) for f in plan] == [
        ("mf-metadata", 8080, 8080),
        ("mf-ui-backend", 8083, 8083),
        ("mf-ui", 3000, 3000),
        ("mf-webserver", 8081, 8080),
    ]


def test_plan_with_argo():
    plan = portforward.plan("metaflow", {"metaflow-argo-workflows-server"})
    assert [(f.label, f.url) for f in plan] == [
        ("Argo Workflows", "http://localhost:2746 (log in with: Bearer <your Kubernetes token>)")]


def test_plan_points_at_airflow_under_the_sign_in_path_for_break_glass():
    [plain] = portforward.plan("mf", {"mf-webserver"})
    assert plain.url == "http://localhost:8081"
    [signin] = portforward.plan("mf", {"mf-webserver"}, airflow_signin=True)
    assert (signin.local, signin.remote) == (8081, 8080)
    assert signin.url.startswith("http://localhost:8081/airflow/ ")
    assert "metaflow-airflow-admin" in signin.url
