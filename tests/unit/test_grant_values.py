"""What mfhelm grant changes in the release's values, and what a later
mfhelm install keeps of it: pure functions over values."""

from __future__ import annotations

import pytest

from mfhelm import grant
from mfhelm.errors import MfhelmError
from mfhelm.uservalues import UserValues

INSTALLED = {
    "profile": "azure",
    "metadata": {"replicas": 2},
    "dataScientists": {"groups": ["g-ds"], "users": ["ann@example.com"]},
    "access": {"adminGroups": ["g-admin"]},
}


def test_grant_adds_the_group_and_keeps_every_other_value():
    out = grant.with_group(INSTALLED, "g-new", "data-scientist")
    assert out["dataScientists"] == {"groups": ["g-ds", "g-new"], "users": ["ann@example.com"]}
    assert {k: v for k, v in out.items() if k != "dataScientists"} == \
        {k: v for k, v in INSTALLED.items() if k != "dataScientists"}
    assert "viewers" not in out
    assert INSTALLED["dataScientists"]["groups"] == ["g-ds"]  # not changed in place


def test_grant_is_idempotent():
    once = grant.with_group(INSTALLED, "g-ds", "data-scientist")
    assert once == INSTALLED


def test_a_new_role_moves_the_group():
    out = grant.with_group(INSTALLED, "g-ds", "viewer")
    assert out["dataScientists"]["groups"] == []
    assert out["viewers"] == {"groups": ["g-ds"]}
    assert grant.role_of(out, "g-ds") == "viewer"


def test_revoke_removes_the_group_from_both_lists():
    both = {**INSTALLED, "viewers": {"groups": ["g-ds", "g-v"]}}
    out = grant.with_group(both, "g-ds", None)
    assert out["dataScientists"]["groups"] == [] and out["viewers"]["groups"] == ["g-v"]
    assert grant.role_of(out, "g-ds") is None
    assert grant.with_group(out, "g-ds", None) == out


def test_install_keeps_granted_groups():
    fresh = {"profile": "azure", "metadata": {"replicas": 1}}
    previous = {**INSTALLED, "viewers": {"groups": ["g-v"]}}
    out = grant.keep_granted(previous, fresh, UserValues().writes)
    assert out["dataScientists"] == {"groups": ["g-ds"]}
    assert out["viewers"] == {"groups": ["g-v"]}
    assert out["metadata"] == {"replicas": 1}


def test_install_lets_the_users_own_list_win(tmp_path):
    values_file = tmp_path / "mine.yaml"
    values_file.write_text("dataScientists:\n  groups: [g-mine]\n")
    user = UserValues.read([values_file])
    fresh = user.layer({"profile": "azure"})
    out = grant.keep_granted({**INSTALLED, "viewers": {"groups": ["g-v"]}}, fresh, user.writes)
    assert out["dataScientists"]["groups"] == ["g-mine"]
    assert out["viewers"]["groups"] == ["g-v"]  # not set by the user: kept
    emptied = UserValues.read((), ["dataScientists.groups=null"])
    out = grant.keep_granted(INSTALLED, emptied.layer({}), emptied.writes)
    assert out["dataScientists"]["groups"] is None


def test_user_values_writes_tells_which_keys_a_layer_sets():
    user = UserValues.read((), ["viewers.groups={a,b}", "metadata.replicas=2"])
    assert user.writes("viewers.groups") and user.writes("metadata.replicas")
    assert not user.writes("dataScientists.groups")
    assert UserValues.read((), ["viewers=null"]).writes("viewers.groups")


@pytest.mark.parametrize("role", ["admin", "Viewer", ""])
def test_unknown_roles_are_refused(role):
    with pytest.raises(MfhelmError, match="data-scientist, viewer"):
        grant.check_role(role)


@pytest.mark.parametrize("ref", ["", "  ", "a\nb", "x" * 300])
def test_empty_or_odd_group_references_are_refused(ref):
    with pytest.raises(MfhelmError, match="--group"):
        grant.check_group_ref(ref)
