"""The Argo server's values behind sign-in: the UI's base path (issue 18, item 3).

argo-helm 1.0.18 writes `server.baseHref` into ARGO_BASE_HREF, which v4.0.7
puts into `<base href="...">` of the UI's index.html (server/static/static.go;
v4 adds missing slashes, v3.6.10 wrote the value verbatim); the UI resolves
its scripts and its /api/v1 calls against it. Without the trailing slash
the browser drops the last segment (`/argo` resolves `api/v1` to `/api/v1`,
the Metaflow UI's backend) on a server that writes it verbatim, so the
schema refuses it.
"""

import pytest
from chartlib import CHART, HelmError, render

AZURE = CHART / "ci" / "azure-values.yaml"


@pytest.mark.parametrize("href", ["/", "/argo/", "/tools/argo/"])
def test_base_paths_the_ui_can_resolve_against_render(href):
    render([AZURE], {"argo-workflows": {"server": {"baseHref": href}}})


@pytest.mark.parametrize("href", ["/argo", "argo/", "", "//", "/argo//", "https://h/argo/",
                                  "/argo/?x=1"])
def test_base_paths_the_ui_would_resolve_wrongly_are_refused(href):
    with pytest.raises(HelmError) as err:
        render([AZURE], {"argo-workflows": {"server": {"baseHref": href}}})
    assert "baseHref" in str(err.value)
