"""`aks.kubernetes_version` takes major.minor or nothing (issue 17, item 12).

A patch version (1.33.2) used to pass: AKS's patch upgrade channel then moves the
cluster on (1.33.5), and the next deploy asks AKS for 1.33.2 again, a downgrade it
refuses. With major.minor, AKS runs that minor's latest patch and keeps it current.
main.bicep applies the same rule (tests/bicep/test_bicep_parameter_checks.py).
"""

from __future__ import annotations

import pytest
from test_bicep_deploy import PRINCIPAL
from test_cli_deploy import az, mfhelm, one_error_line, work  # noqa: F401 (fixtures)

from mfhelm import bicep_deploy as bd
from mfhelm.errors import MfhelmError
from mfhelm.settings import parse


def _settings(version: str) -> dict[str, object]:
    return {"org_prefix": "acme", "location": "westeurope",
            "aks": {"kubernetes_version": version}}


@pytest.mark.parametrize("version", ["", "1.33", "1.9", "1.100", "2.0"])
def test_minor_versions_and_empty_reach_the_template(version: str):
    doc = bd.build_parameters(parse(_settings(version)), PRINCIPAL)
    assert doc["parameters"]["kubernetesVersion"] == {"value": version}


@pytest.mark.parametrize("version", [
    "1.33.2", "1.33.0", "1", "1.", ".33", "v1.33", "1.33 ", "1.33\n", "1,33",
    "\u0661.\u0663\u0663",  # Arabic-Indic digits: \d takes them, AKS does not
])
def test_anything_else_is_refused_with_one_line_naming_the_field(version: str):
    with pytest.raises(MfhelmError) as refused:
        parse(_settings(version))
    message = str(refused.value)
    assert message.startswith("mfhelm.toml: aks.kubernetes_version: must be major.minor such "
                              "as 1.33, or empty for AKS's default, not ")
    assert "\n" not in message


def test_deploy_refuses_a_patch_version_before_calling_azure(work, az):  # noqa: F811
    (work / "mfhelm.toml").write_text(
        'org_prefix = "acme"\nlocation = "westeurope"\n\n[aks]\nkubernetes_version = "1.33.2"\n')
    one_error_line(mfhelm(work, az, "deploy", "--skip-preflight"),
                   "aks.kubernetes_version", "major.minor", "'1.33.2'")
    assert az.calls() == []
