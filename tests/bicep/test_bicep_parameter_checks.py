"""main.bicep checks orgPrefix and kubernetesVersion itself, by the same rules as mfhelm.

Bicep has no pattern constraint, so main.bicep spells each rule out in variables and
calls fail() when a value breaks it (issue 17, items 12 and 14). No Bicep compiler or ARM
engine runs here: bicep_rules.evaluate computes those variables from the parsed template,
with ARM's semantics for the few functions they use, and each test below feeds the same
values to the template and to mfhelm's settings and wants the same verdict.
"""

from __future__ import annotations

from typing import Any

import bicep_rules as R
import pytest

from mfhelm.errors import MfhelmError
from mfhelm.settings import parse

MAIN = R.BICEP_DIR / "main.bicep"


@pytest.fixture(scope="module")
def main() -> dict[str, Any]:
    return R.parse_file(MAIN)


def _checked_variable(main: dict[str, Any], module_param: str) -> str:
    """The variable main.bicep hands to every module that takes `module_param`."""
    given = {name: R.body(mod)["params"][module_param]
             for name, mod in main["modules"].items() if module_param in R.body(mod)["params"]}
    assert given, module_param
    (variable,) = set(given.values())
    assert variable in main["variables"], given
    return str(variable)


def bicep_verdict(main: dict[str, Any], param: str, module_param: str,
                  value: str) -> str | None:
    """None when a deployment of main.bicep accepts `value` for `param`, else why not.

    ARM checks the parameter's decorators first, then evaluates what the modules get."""
    decorators = {d["type"]: d.get("argument") for d in main["parameters"][param]["decorators"]}
    if "min_length" in decorators and len(value) < decorators["min_length"]:
        return f"{param}: shorter than {decorators['min_length']}"
    if "max_length" in decorators and len(value) > decorators["max_length"]:
        return f"{param}: longer than {decorators['max_length']}"
    variable = _checked_variable(main, module_param)
    try:
        result = R.evaluate(variable, main, {param: value})
    except R.Failed as failed:
        return failed.message
    assert result == value
    return None


def mfhelm_verdict(data: dict[str, Any]) -> str | None:
    try:
        parse({"org_prefix": "acme", "location": "westeurope", **data})
    except MfhelmError as exc:
        return str(exc)
    return None


# Every printable ASCII character and a few that trip up regexes and case mapping:
# tab, newline, letters with odd lowercase forms (dotted I, Kelvin sign, long s),
# non-ASCII digits (Arabic-Indic, fullwidth), invisible ones, one outside the BMP.
ODD_CHARS = ("".join(map(chr, range(0x20, 0x7F))) + "\t\n\r"
             + "éßıİ\u212aſµ٣１ａ\u00ad\u200d😀")


def _disagreements(main: dict[str, Any], param: str, samples: set[str],
                   settings: Any) -> dict[str, tuple[str | None, str | None]]:
    verdicts = {s: (bicep_verdict(main, param, param, s), mfhelm_verdict(settings(s)))
                for s in sorted(samples)}
    accepted = {s for s, (b, m) in verdicts.items() if b is None and m is None}
    assert accepted and len(accepted) < len(samples), "the samples test one side only"
    return {s: v for s, v in verdicts.items() if (v[0] is None) != (v[1] is None)}


PREFIXES = {"", "a", "ab", "acme", "a1", "ab12cd34", "abcdefgh", "abcdefghi", "1acme",
            "Acme", "ACME", "acmE", "ac-me", "ac_me"}
PREFIXES |= {p for ch in ODD_CHARS for p in (ch + "bc", "a" + ch + "c", "ab" + ch)}
# mfhelm's ORG_PREFIX_RE ends in `$`, which also matches before a final newline; the
# settings-validation change that anchors the patterns with \Z fixes that.
TRAILING_NEWLINE = "ab\n"


def test_org_prefix_rule_is_the_same_in_bicep_and_mfhelm(main):
    samples = PREFIXES - {TRAILING_NEWLINE}
    assert _disagreements(main, "orgPrefix", samples, lambda p: {"org_prefix": p}) == {}


def test_org_prefix_with_a_trailing_newline_is_refused_by_both(main):
    assert bicep_verdict(main, "orgPrefix", "orgPrefix", TRAILING_NEWLINE) is not None
    assert mfhelm_verdict({"org_prefix": TRAILING_NEWLINE}) is not None


VERSIONS = {"", "1.33", "1.3", "10.100", "0.0", "1.33.2", "1", "1.", ".33", "1..3", ".", "..",
            "1.33.", "v1.33", " 1.33", "1.33 ", "1,33", "1.33-preview", "+1.33", "-1.33",
            "1.3a", "a.b", "١.٣٣", "１.３３", "1.33\n"}
VERSIONS |= {v for ch in ODD_CHARS for v in (ch + "1.33", "1" + ch + "33", "1.3" + ch + "3",
                                             "1.33" + ch)}


def test_kubernetes_version_rule_is_the_same_in_bicep_and_mfhelm(main):
    assert _disagreements(main, "kubernetesVersion", VERSIONS,
                          lambda v: {"aks": {"kubernetes_version": v}}) == {}


def test_a_bad_prefix_fails_with_a_message_naming_org_prefix(main):
    assert bicep_verdict(main, "orgPrefix", "orgPrefix", "Acme") == (
        'orgPrefix "Acme": must be 2-8 characters, lowercase letters and digits, starting '
        "with a letter (it becomes part of the storage account name)")


def test_a_patch_version_fails_with_a_message_naming_kubernetes_version(main):
    message = bicep_verdict(main, "kubernetesVersion", "kubernetesVersion", "1.33.2")
    assert message is not None
    assert message.startswith('kubernetesVersion "1.33.2": must be major.minor such as 1.33')
    assert mfhelm_verdict({"aks": {"kubernetes_version": "1.33.2"}}) == (
        "mfhelm.toml: aks.kubernetes_version: must be major.minor such as 1.33, or empty for "
        "AKS's default, not '1.33.2' (AKS keeps the patch current; a pinned patch would be a "
        "downgrade on the next deploy)")


@pytest.mark.parametrize("param, checks", [
    ("orgPrefix", {"orgPrefixCharsOk", "orgPrefixValid", "checkedOrgPrefix"}),
    ("kubernetesVersion", {"kubernetesVersionCharsOk", "kubernetesVersionValid",
                           "checkedKubernetesVersion"}),
])
def test_nothing_reads_the_parameter_without_the_check(main, param: str, checks: set[str]):
    """Every name and module input is built from the checked variable, so the check runs
    before anything uses the value. (resourceGroupName's default may read the prefix: a
    resource group name takes upper case and more, and params cannot read variables.)"""
    readers = {f"{kind} {name}" for kind, name, parts in R._declarations(main)
               if param in set(R.refs(parts)) and name != param}
    allowed = {f"variables {v}" for v in checks} | {"parameters resourceGroupName"}
    assert readers <= allowed, readers - allowed
    assert {f"variables {v}" for v in checks} <= readers
    checked = _checked_variable(main, param)
    assert checked in checks
    assert "nameSuffix" not in main["variables"] or param not in set(
        R.refs(main["variables"]["nameSuffix"]["value"]))


def test_the_checks_run_where_bicep_evaluates_them(main):
    """fail() only stops a deployment in the branch of a ?: that ARM evaluates, and it
    sits in a string so that checkov's older Bicep parser still reads the file."""
    for variable in ("checkedOrgPrefix", "checkedKubernetesVersion"):
        value = main["variables"][variable]["value"]
        op = value["operator"]
        assert op["type"] == "conditional", variable
        assert str(op["operands"]["false_value"]).startswith("${fail('"), variable


# --- the evaluator itself -----------------------------------------------------------------


def test_evaluator_runs_fail_only_in_the_branch_taken():
    tpl = R.parse_text("""
param p string
var ok = p == 'x'
var v = ok ? p : '${fail('p "${p}" is not x')}'
""")
    assert R.evaluate("v", tpl, {"p": "x"}) == "x"
    with pytest.raises(R.Failed, match='^p "y" is not x$'):
        R.evaluate("v", tpl, {"p": "y"})


def test_evaluator_follows_arm_string_semantics():
    tpl = R.parse_text("""
param p string
var chars = [for i in range(0, length(p)): substring(p, i, 1)]
var parts = split(p, '.')
var starts = startsWith(p, 'A')
var has = contains('abc', first(p))
var both = (length(parts) == 2) && (!empty(parts[1]))
""")
    env = {"p": "a.B"}
    assert R.evaluate("chars", tpl, env) == ["a", ".", "B"]
    assert R.evaluate("parts", tpl, env) == ["a", "B"]
    assert R.evaluate("starts", tpl, env) is True  # startsWith ignores case
    assert R.evaluate("has", tpl, {"p": "A.b"}) is False  # contains does not
    assert R.evaluate("both", tpl, env) is True
    assert R.evaluate("both", tpl, {"p": "a."}) is False
