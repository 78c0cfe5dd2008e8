"""The `mfhelm` command line. Parses, calls one function, prints.

Keep this module cheap to import: `mfhelm --help` must answer fast, so the
Azure and Kubernetes SDKs are imported inside the functions that need them.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path
from typing import Any, NoReturn

import typer

from mfhelm import __version__, proc
from mfhelm.errors import Interrupted, MfhelmError, redact

app = typer.Typer(
    name="mfhelm",
    help="Stand up and operate a production Metaflow stack on Azure.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    # Plain help: rendering it through rich costs more than the whole
    # 0.3 s budget for `mfhelm --help`.
    rich_markup_mode=None,
)

_state = {"debug": False}


def _version_callback(value: bool) -> None:
    if value:
        typer.echo(f"mfhelm {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_version_callback, is_eager=True,
        help="Print the mfhelm version and exit.",
    ),
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks for errors."),
) -> None:
    """Stand up and operate a production Metaflow stack on Azure."""
    _state["debug"] = debug


# ---------------------------------------------------------------- helpers

def _echo_err(msg: str) -> None:
    typer.echo(redact(msg), err=True)


class _Steps:
    """Progress for commands that wait: a spinner on the current step in a
    terminal (finished steps ticked off), one `> step` line per step in logs."""

    def __init__(self) -> None:
        from rich.console import Console

        self.console = Console(stderr=True, highlight=False)
        self.status: Any = None
        self.current = ""

    def __call__(self, msg: str) -> None:
        from rich.text import Text

        # One line per step, whatever it quotes: a step may name a chart
        # reference thousands of characters long (rich would wrap it at the
        # console's width) or with [brackets] (rich would read them as markup).
        msg = redact(_one_line(msg))
        if not self.console.is_terminal:
            self.console.print(Text(f"> {msg}"), soft_wrap=True)
            return
        line = Text(msg, no_wrap=True, overflow="ellipsis")
        if self.status is None:
            self.status = self.console.status(line)
            self.status.start()
        else:
            self.console.print(Text.assemble(("done", "green"), " ", self.current), no_wrap=True,
                               overflow="ellipsis")
            self.status.update(line)
        self.current = msg

    def close(self) -> None:
        if self.status is not None:
            self.status.stop()
            self.status = None


def _outputs(outputs_file: Path | None, settings: Any, subscription: str | None) -> dict[str, Any]:
    from mfhelm.azure import outputs as az_outputs

    if outputs_file is not None:
        outputs = az_outputs.load_outputs_file(outputs_file)
    else:
        from mfhelm.azure.credentials import get_credential, resolve_subscription_id

        outputs = az_outputs.deployment_outputs(
            resolve_subscription_id(subscription), settings.deployment,
            credential=get_credential())
    az_outputs.check_settings(outputs, settings)
    return outputs


# readable=False: mfhelm reads these files itself (mfhelm.userfiles), so that an
# unreadable one is the same single line as a directory or a FIFO.
SettingsOpt = typer.Option(None, "--settings", readable=False,
                           help="Settings file (default ./mfhelm.toml).")
OutputsOpt = typer.Option(None, "--outputs", readable=False,
                          help="Saved deployment outputs (JSON) instead of Azure.")
SubOpt = typer.Option(None, "--subscription", help="Azure subscription id (default: az's).")
KubeconfigOpt = typer.Option(None, "--kubeconfig", help="Kubeconfig file (default: $KUBECONFIG).")
ContextOpt = typer.Option(None, "--context", help="Kube context (default: the current one).")
# User values over mfhelm's, in Helm's order (mfhelm.uservalues).
ValuesOpt = typer.Option(None, "-f", "--values", readable=False, metavar="FILE",
                         help="Values file (YAML) over mfhelm's; repeat for more, the last wins.")
SetOpt = typer.Option(None, "--set", metavar="KEY=VALUE",
                      help="key=value over the files, in Helm's --set syntax "
                      "(a.b=1, list[0]=x, l={a,b}); repeatable.")
AllowOpt = typer.Option(None, "--allow-override", metavar="KEY",
                        help="Let your values change this protected key (they come from the "
                        "deployment); repeatable.")


SigninIssuerOpt = typer.Option(
    None, "--signin-issuer", metavar="URL",
    help="With --local: put the entry point and sign-in in front, against this OIDC issuer.")
SigninClientIdOpt = typer.Option(None, "--signin-client-id", metavar="ID",
                                 help="With --signin-issuer: the client id at that issuer.")
SigninClientSecretOpt = typer.Option(
    None, "--signin-client-secret", metavar="SECRET",
    help="With --signin-issuer: a Secret (key client-secret) holding the client secret.")
SigninHostOpt = typer.Option(None, "--signin-host", metavar="HOST",
                             help="With --signin-issuer: the host name users open.")
SigninTlsOpt = typer.Option(None, "--signin-tls-secret", metavar="SECRET",
                            help="With --signin-issuer: the kubernetes.io/tls Secret for it.")
SigninGroupOpt = typer.Option(None, "--signin-group", metavar="GROUP",
                              help="With --signin-issuer: a group allowed in; repeatable.")


def _local_access(local: bool, issuer: str | None, client_id: str | None,
                  client_secret: str | None, host: str | None, tls_secret: str | None,
                  groups: list[str] | None) -> Any:
    from mfhelm.values import LocalAccess

    access = LocalAccess.from_options(issuer=issuer, client_id=client_id, host=host,
                                      tls_secret=tls_secret, groups=groups or (),
                                      client_secret_name=client_secret)
    if access is not None and not local:
        raise MfhelmError("--signin-issuer is for --local; on azure sign-in comes from "
                          "mfhelm.toml [access]")
    return access


def _target(settings_file: Path | None, kubeconfig: str | None, context: str | None,
            release: str | None, namespace: str | None, local: bool) -> Any:
    """Where a cluster command goes; every part checked before the first call."""
    from mfhelm import settings as settings_mod
    from mfhelm.stack import Target

    if release is not None:
        settings_mod.check_helm_name(release, "--release")
    if namespace is not None:
        settings_mod.check_helm_name(namespace, "--namespace")
    if kubeconfig is not None:
        from mfhelm import kube

        kube.check_kubeconfig(kubeconfig)
    if local and not os.path.lexists(settings_mod.settings_path(settings_file)):
        return Target(release or "metaflow", namespace or "metaflow", kubeconfig, context)
    s = settings_mod.load(settings_file)
    return Target(release or s.helm.release, namespace or s.helm.namespace, kubeconfig, context)


# --------------------------------------------------------------- commands

@app.command()
def init(
    org_prefix: str = typer.Option(..., "--org-prefix", help="2-8 lowercase letters/digits."),
    location: str = typer.Option("westeurope", "--location", help="Azure region."),
    argo: bool = typer.Option(True, "--argo/--no-argo", help="Deploy Argo Workflows."),
    airflow: bool = typer.Option(False, "--airflow/--no-airflow", help="Deploy Airflow."),
    # A string, not a Path: Path("new/") would drop the '/' that says "directory".
    settings_file: str = typer.Option("mfhelm.toml", "--settings", help="File to write."),
    force: bool = typer.Option(False, "--force", help="Overwrite an existing settings file."),
) -> None:
    """Write the settings file that mfhelm deploy and the other commands read."""
    from mfhelm import settings as settings_mod

    if os.path.lexists(settings_file) and not force:
        raise MfhelmError(f"{settings_file} exists; edit it, or pass --force to replace it")
    fields = {"org_prefix": org_prefix, "location": location,
              "deploy_argo": argo, "deploy_airflow": airflow}
    s = settings_mod.parse(fields, "mfhelm init")
    path = settings_mod.save(s, settings_file)
    typer.echo(f"wrote {path}; next: mfhelm deploy")


@app.command()
def deploy(
    what_if: bool = typer.Option(False, "--what-if",
                                 help="Preview the changes (az deployment sub what-if); "
                                 "change nothing."),
    build_only: bool = typer.Option(False, "--build-only",
                                    help="Only compile the Bicep template (az bicep build)."),
    skip_preflight: bool = typer.Option(False, "--skip-preflight",
                                        help="Deploy without the `mfhelm doctor` checks."),
    settings_file: Path | None = SettingsOpt,
) -> None:
    """Create or update the Azure resources from the packaged Bicep (uses `az`)."""
    from mfhelm import bicep_deploy

    if what_if and build_only:
        raise MfhelmError("--what-if and --build-only exclude each other; give one")
    if skip_preflight and (what_if or build_only):
        raise MfhelmError("--skip-preflight applies to a deploy, not to --what-if or --build-only")
    command = "build" if build_only else "whatif" if what_if else "deploy"
    bicep_deploy.run(command, settings_file, skip_preflight=skip_preflight)


@app.command()
def render(
    # A string, not a Path: Path("out/") would drop the '/' that says "directory".
    output: str | None = typer.Option(None, "-o", "--output",
                                      help="Write here (default: stdout)."),
    local: bool = typer.Option(False, "--local", help="The local profile's values instead."),
    argo: bool = typer.Option(True, "--argo/--no-argo", help="With --local: Argo Workflows."),
    airflow: bool = typer.Option(False, "--airflow/--no-airflow", help="With --local: Airflow."),
    namespace: str | None = typer.Option(None, "--namespace", "-n",
                                         help="With --local: the release namespace."),
    signin_issuer: str | None = SigninIssuerOpt,
    signin_client_id: str | None = SigninClientIdOpt,
    signin_client_secret: str | None = SigninClientSecretOpt,
    signin_host: str | None = SigninHostOpt,
    signin_tls_secret: str | None = SigninTlsOpt,
    signin_group: list[str] | None = SigninGroupOpt,
    values_files: list[Path] | None = ValuesOpt,
    set_values: list[str] | None = SetOpt,
    allow_override: list[str] | None = AllowOpt,
    settings_file: Path | None = SettingsOpt,
    outputs_file: Path | None = OutputsOpt,
    subscription: str | None = SubOpt,
) -> None:
    """Write the Helm values mfhelm installs (azure profile from the deployment
    outputs, or --local), your -f/--set merged in; no secrets."""
    import yaml

    from mfhelm import settings as settings_mod
    from mfhelm import uservalues
    from mfhelm import values as values_mod

    user = uservalues.UserValues.read(values_files or (), set_values or (), allow_override or ())
    access = _local_access(local, signin_issuer, signin_client_id, signin_client_secret,
                           signin_host, signin_tls_secret, signin_group)
    if local:
        target = _target(settings_file, None, None, None, namespace, True)
        ns = target.namespace
        values = values_mod.local_values(argo=argo, airflow=airflow,
                                         flow_namespace=values_mod.flows_namespace_for(ns),
                                         access=access)
        protected = uservalues.LOCAL_PROTECTED
    else:
        if namespace is not None:
            raise MfhelmError("--namespace is for --local; on azure it comes from mfhelm.toml")
        s = settings_mod.load(settings_file)
        outs = _outputs(outputs_file, s, subscription)
        values = values_mod.render_values(outs, s)
        ns = str(outs["serviceNamespace"])
        protected = uservalues.AZURE_PROTECTED
        from mfhelm.stack import Target

        target = Target(s.helm.release, s.helm.namespace)
    if user:
        from mfhelm import stack

        values = stack.with_user_values(values, user, protected, ns, target)
    elif local:
        values = values_mod.argo_watches_flow_namespace(values, ns)
    text = yaml.safe_dump(values, sort_keys=False)
    if output is None:
        typer.echo(text, nl=False)
    else:
        from mfhelm import userfiles

        # Private: -f/--set layers may carry credentials mfhelm cannot tell apart.
        userfiles.write_text(output, text, private=True, stream_ok=True)
        _echo_err(f"wrote {output}")


@app.command()
def install(
    local: bool = typer.Option(False, "--local", help="Local profile into the current context."),
    argo: bool = typer.Option(True, "--argo/--no-argo", help="With --local: Argo Workflows."),
    airflow: bool = typer.Option(False, "--airflow/--no-airflow", help="With --local: Airflow."),
    signin_issuer: str | None = SigninIssuerOpt,
    signin_client_id: str | None = SigninClientIdOpt,
    signin_client_secret: str | None = SigninClientSecretOpt,
    signin_host: str | None = SigninHostOpt,
    signin_tls_secret: str | None = SigninTlsOpt,
    signin_group: list[str] | None = SigninGroupOpt,
    settings_file: Path | None = SettingsOpt,
    outputs_file: Path | None = OutputsOpt,
    subscription: str | None = SubOpt,
    kubeconfig: str | None = KubeconfigOpt,
    context: str | None = ContextOpt,
    release: str | None = typer.Option(None, "--release", help="Release name."),
    namespace: str | None = typer.Option(None, "--namespace", "-n", help="Namespace."),
    chart: str | None = typer.Option(
        None, "--chart", help="Chart directory, or oci://REGISTRY/NAME (with --version)."),
    chart_version: str | None = typer.Option(
        None, "--version", help="With --chart oci://...: the chart version to install."),
    plain_http: bool = typer.Option(
        False, "--plain-http", help="With --chart oci://...: the registry speaks plain HTTP."),
    values_files: list[Path] | None = ValuesOpt,
    set_values: list[str] | None = SetOpt,
    allow_override: list[str] | None = AllowOpt,
    timeout: str = typer.Option("10m", "--timeout", help="How long helm waits."),
    verify_after: bool = typer.Option(False, "--verify",
                                      help="Then run `mfhelm verify` against the release."),
) -> None:
    """Install or upgrade the stack; a failed upgrade rolls back."""
    from mfhelm import settings as settings_mod
    from mfhelm import stack
    from mfhelm.oci import chart_source
    from mfhelm.uservalues import UserValues

    settings_mod.check_timeout(timeout)
    if verify_after:
        from mfhelm.verify.cli import DEFAULT_TIMEOUT, check_arguments

        check_arguments(timeout=DEFAULT_TIMEOUT, config_profile=None)
    source = chart_source(chart, chart_version, plain_http=plain_http)
    if isinstance(source, Path):
        from mfhelm.helm import find_chart

        find_chart(source)  # its Chart.yaml and values.yaml, read and checked now
    user = UserValues.read(values_files or (), set_values or (), allow_override or ())
    access = _local_access(local, signin_issuer, signin_client_id, signin_client_secret,
                           signin_host, signin_tls_secret, signin_group)
    target = _target(settings_file, kubeconfig, context, release, namespace, local)
    step = _Steps()
    try:
        if local:
            info = stack.install_local(target, argo=argo, airflow=airflow, chart=source,
                                       timeout=timeout, user_values=user, progress=step,
                                       access=access)
        else:
            from mfhelm.azure.credentials import get_credential, resolve_subscription_id

            s = settings_mod.load(settings_file)
            sub = resolve_subscription_id(subscription)
            outs = _outputs(outputs_file, s, sub)
            info = stack.install_azure(target, s, outs, credential=get_credential(),
                                       subscription_id=sub, chart=source, timeout=timeout,
                                       user_values=user, progress=step)
    finally:
        step.close()
    typer.echo(f"release {info.name} revision {info.revision}: {info.status} "
               f"(chart {info.chart_version}, app {info.app_version})")
    if verify_after:
        from mfhelm.verify.cli import DEFAULT_TIMEOUT

        _verify(target, local=local, config_profile=None, timeout=DEFAULT_TIMEOUT, keep=False)
        return
    typer.echo("next: mfhelm status; mfhelm port-forward; mfhelm config")


UpNameOpt = typer.Option("mfhelm", "--name", help="The kind cluster's name "
                         "(its kubeconfig context is kind-NAME).")


@app.command()
def up(
    name: str = UpNameOpt,
    argo: bool = typer.Option(True, "--argo/--no-argo", help="Argo Workflows and Argo Events."),
    airflow: bool = typer.Option(False, "--airflow/--no-airflow", help="Airflow."),
    timeout: str = typer.Option("15m", "--timeout",
                                help="How long making the cluster, and the install, may take."),
) -> None:
    """A local stack in one command (needs Docker and kind): a kind cluster with
    the AKS pools, install --local, config --local. Run again: reuses the cluster."""
    from mfhelm import up as up_mod

    step = _Steps()
    try:
        outcome = up_mod.up(name, argo=argo, airflow=airflow, timeout=timeout, progress=step)
    finally:
        step.close()
    for line in outcome.lines():
        typer.echo(line)


@app.command()
def down(name: str = UpNameOpt) -> None:
    """Delete the kind cluster mfhelm up made, and the stack in it."""
    from mfhelm import up as up_mod

    step = _Steps()
    try:
        up_mod.down(name, progress=step)
    finally:
        step.close()
    typer.echo(f"deleted kind cluster {name}")


def _verify(target: Any, *, local: bool, config_profile: str | None, timeout: str,
            keep: bool) -> None:
    from mfhelm.verify.cli import verify as verify_cmd

    verify_cmd(target, local=local, config_profile=config_profile, timeout=timeout, keep=keep,
               echo=typer.echo, warn=_echo_err)


@app.command()
def verify(
    local: bool = typer.Option(False, "--local", help="A local-profile release (no mfhelm.toml)."),
    settings_file: Path | None = SettingsOpt,
    kubeconfig: str | None = KubeconfigOpt,
    context: str | None = ContextOpt,
    release: str | None = typer.Option(None, "--release", help="Release name."),
    namespace: str | None = typer.Option(None, "--namespace", "-n", help="Namespace."),
    config_profile: str | None = typer.Option(
        None, "--config-profile", metavar="P",
        help="Run with the Metaflow config config_P.json (default: $METAFLOW_PROFILE, "
        "else config.json)."),
    timeout: str = typer.Option("15m", "--timeout", help="How long verify may take in all."),
    keep: bool = typer.Option(False, "--keep",
                              help="Leave what verify created (templates, DAG files, its "
                              "scratch directory)."),
) -> None:
    """Run a small flow through every layer of the stack, stopping at the first that fails."""
    from mfhelm.verify.cli import check_arguments

    check_arguments(timeout=timeout, config_profile=config_profile)
    target = _target(settings_file, kubeconfig, context, release, namespace, local)
    _verify(target, local=local, config_profile=config_profile, timeout=timeout, keep=keep)


@app.command()
def status(
    settings_file: Path | None = SettingsOpt,
    kubeconfig: str | None = KubeconfigOpt,
    context: str | None = ContextOpt,
    release: str | None = typer.Option(None, "--release"),
    namespace: str | None = typer.Option(None, "--namespace", "-n"),
) -> None:
    """Release, revision, versions and the readiness of each component."""
    from mfhelm import stack

    target = _target(settings_file, kubeconfig, context, release, namespace, True)
    st = stack.status(target)
    if st.release is None:
        raise MfhelmError(f"no release {target.release!r} in namespace {target.namespace!r}; "
                          "run mfhelm install")
    r = st.release
    typer.echo(f"release {r.name} in {r.namespace}: revision {r.revision}, {r.status}, "
               f"chart {r.chart_version}, app {r.app_version}")
    for c in st.components:
        mark = "ready" if c.ok else "NOT READY"
        typer.echo(f"  {c.kind:<12} {c.name:<40} {c.ready}/{c.desired} {mark}")
    if st.profile == "local":
        typer.echo(stack.LOCAL_PROFILE_LIMITS)
    if not all(c.ok for c in st.components):
        raise typer.Exit(1)


@app.command()
def uninstall(
    purge: bool = typer.Option(False, "--purge", help="Also delete PVCs and mfhelm's Secrets."),
    yes: bool = typer.Option(False, "--yes", help="Do not ask before --purge."),
    settings_file: Path | None = SettingsOpt,
    kubeconfig: str | None = KubeconfigOpt,
    context: str | None = ContextOpt,
    release: str | None = typer.Option(None, "--release"),
    namespace: str | None = typer.Option(None, "--namespace", "-n"),
) -> None:
    """Remove the release; data (PVCs, Blob, PostgreSQL) stays unless --purge."""
    from mfhelm import stack

    if purge and not yes and not sys.stdin.isatty():
        raise MfhelmError("--purge deletes the data volumes and Secrets, and there is no "
                          "terminal to confirm on: pass --yes to go ahead")
    target = _target(settings_file, kubeconfig, context, release, namespace, True)
    if purge and not yes:
        typer.confirm(f"Delete the data volumes of {target.release!r} in {target.namespace!r}?",
                      abort=True)
    deleted = stack.uninstall(target, purge=purge)
    typer.echo(f"uninstalled {target.release}")
    for item in deleted:
        typer.echo(f"  deleted {item}")
    if not purge:
        typer.echo("data kept (PVCs, Secrets); `mfhelm uninstall --purge` removes it")


@app.command()
def config(
    profile: str | None = typer.Option(None, "--profile", help="Write config_NAME.json."),
    print_only: bool = typer.Option(False, "--print", help="Print instead of writing."),
    service_url: str | None = typer.Option(
        None, "--service-url", help="Metadata service URL as laptops reach it (default: "
        "https://<[access] host>/metadata with the entry point, else http://localhost:8080)."),
    settings_file: Path | None = SettingsOpt,
    outputs_file: Path | None = OutputsOpt,
    subscription: str | None = SubOpt,
    local: bool = typer.Option(False, "--local", help="A local-profile release, through "
                               "`mfhelm port-forward` (read from the cluster)."),
    kubeconfig: str | None = KubeconfigOpt,
    context: str | None = ContextOpt,
    release: str | None = typer.Option(None, "--release", help="With --local: the release."),
    namespace: str | None = typer.Option(None, "--namespace", "-n",
                                         help="With --local: the release namespace."),
) -> None:
    """Write the end-user Metaflow config (~/.metaflowconfig)."""
    from mfhelm import metaflow_config
    from mfhelm import settings as settings_mod

    # The arguments first: a bad one is refused before Azure is asked.
    if service_url is not None:
        metaflow_config.check_service_url(service_url)
    metaflow_config.config_path(profile)
    if local:
        _config_local(profile, print_only, service_url, settings_file, outputs_file,
                      subscription, kubeconfig, context, release, namespace)
        return
    for flag, value in (("--kubeconfig", kubeconfig), ("--context", context),
                        ("--release", release), ("--namespace", namespace)):
        if value is not None:
            raise MfhelmError(f"{flag} is for --local; on azure the config comes from the "
                              "deployment outputs")
    s = settings_mod.load(settings_file)
    cfg = metaflow_config.build_config(_outputs(outputs_file, s, subscription), s,
                                       service_url=service_url)
    if print_only:
        typer.echo(metaflow_config.config_json(cfg), nl=False)
    else:
        typer.echo(f"wrote {metaflow_config.write_config(cfg, profile)}")
    _schedules_note(cfg)


def _schedules_note(cfg: dict[str, str]) -> None:
    from mfhelm import metaflow_config

    note = metaflow_config.schedules_note(cfg, metaflow_config.installed_metaflow())
    if note:
        typer.echo(note, err=True)


def _config_local(profile: str | None, print_only: bool, service_url: str | None,
                  settings_file: Path | None, outputs_file: Path | None,
                  subscription: str | None, kubeconfig: str | None, context: str | None,
                  release: str | None, namespace: str | None) -> None:
    """`config --local`: the laptop config of a local-profile release, from the cluster."""
    from mfhelm import kube, metaflow_config

    for flag, value in (("--outputs", outputs_file), ("--subscription", subscription)):
        if value is not None:
            raise MfhelmError(f"{flag} is for the azure profile, not --local")
    target = _target(settings_file, kubeconfig, context, release, namespace, True)
    metaflow_config.config_path(profile)  # a bad --profile is refused before the cluster
    api = kube.api_client(target.kubeconfig, target.context)
    cfg, ca = metaflow_config.local_config(api, target.release, target.namespace, profile)
    if service_url is not None:
        cfg["METAFLOW_SERVICE_URL"] = service_url
    if print_only:
        typer.echo(metaflow_config.config_json(cfg), nl=False)
    else:
        written = metaflow_config.write_local_config(cfg, ca, profile)
        typer.echo(f"wrote {written} and {cfg[metaflow_config.LOCAL_CA_KEY]}\n"
                   "next: `mfhelm port-forward` (keep it running), then run flows")
    _schedules_note(cfg)


@app.command("port-forward")
def port_forward(
    settings_file: Path | None = SettingsOpt,
    kubeconfig: str | None = KubeconfigOpt,
    context: str | None = ContextOpt,
    release: str | None = typer.Option(None, "--release"),
    namespace: str | None = typer.Option(None, "--namespace", "-n"),
) -> None:
    """Forward the metadata service, UI, Argo and Airflow to localhost."""
    from mfhelm import kube, portforward

    target = _target(settings_file, kubeconfig, context, release, namespace, True)
    api = kube.api_client(target.kubeconfig, target.context)
    present = portforward.services(api, target.namespace)
    signin = (f"{target.release}-webserver" in present
              and portforward.airflow_behind_signin(api, target.namespace))
    forwards = portforward.plan(target.release, present, airflow_signin=signin)
    raise typer.Exit(portforward.run(forwards, target.namespace, kubeconfig=target.kubeconfig,
                                     context=target.context, echo=typer.echo))


@app.command("dag-push")
def dag_push(
    dag_file: Path | None = typer.Argument(
        None, readable=False, help="The DAG file to push (a .py file of at most 1 MiB)."),
    name: str | None = typer.Option(None, "--name", help="File name in the DAG folder."),
    list_: bool = typer.Option(False, "--list", help="List the DAGs in the folder."),
    remove: str | None = typer.Option(None, "--remove", help="Remove this DAG file."),
    settings_file: Path | None = SettingsOpt,
    kubeconfig: str | None = KubeconfigOpt,
    context: str | None = ContextOpt,
    release: str | None = typer.Option(None, "--release"),
    namespace: str | None = typer.Option(None, "--namespace", "-n"),
) -> None:
    """Copy an Airflow DAG into the persistent DAG folder (checked, atomic, verified)."""
    from mfhelm import dags, kube

    if (dag_file is not None) + list_ + (remove is not None) != 1:
        raise MfhelmError("give a DAG file, or --list, or --remove NAME")
    # Everything local is checked before any cluster call.
    if dag_file is not None:
        dags.validate_dag_file(dag_file)
        dags.dag_name(dag_file, name)
    if remove is not None:
        dags.check_dag_name(remove, "--remove")
    target = _target(settings_file, kubeconfig, context, release, namespace, True)
    api = kube.api_client(target.kubeconfig, target.context)
    if list_:
        where, names = dags.list_dags(api, target.namespace, target.release)
        for n in names:
            typer.echo(n)
        _echo_err(f"{len(names)} DAG file(s) in {where.pod}:{where.folder}")
    elif remove is not None:
        where = dags.remove_dag(api, target.namespace, target.release, remove)
        typer.echo(f"removed {remove} from {where.pod}:{where.folder}")
    else:
        assert dag_file is not None
        where, final = dags.push(api, target.namespace, target.release, dag_file, name)
        typer.echo(f"pushed {final} to {where.pod}:{where.folder} (verified)")


def _grant_context(local: bool, settings_file: Path | None, outputs_file: Path | None,
                   subscription: str | None, kubeconfig: str | None, context: str | None,
                   release: str | None, namespace: str | None, chart: str | None,
                   chart_version: str | None, plain_http: bool, timeout: str) -> tuple[Any, ...]:
    """The release grant/revoke change, its chart, and (azure) how to reach Azure."""
    from mfhelm import settings as settings_mod
    from mfhelm.grant import AzureSide
    from mfhelm.oci import chart_source

    settings_mod.check_timeout(timeout)
    source = chart_source(chart, chart_version, plain_http=plain_http)
    if isinstance(source, Path):
        from mfhelm.helm import find_chart

        find_chart(source)
    target = _target(settings_file, kubeconfig, context, release, namespace, local)
    if local:
        return target, source, None
    from mfhelm.azure.credentials import get_credential, resolve_subscription_id

    s = settings_mod.load(settings_file)
    sub = resolve_subscription_id(subscription)
    outs = _outputs(outputs_file, s, sub)
    return target, source, AzureSide(outs, get_credential(), sub)


ChartOpt = typer.Option(None, "--chart",
                        help="The chart the release was installed from (default: mfhelm's).")
ChartVersionOpt = typer.Option(None, "--version", help="With --chart oci://...: its version.")
PlainHttpOpt = typer.Option(False, "--plain-http",
                            help="With --chart oci://...: the registry speaks plain HTTP.")
GrantLocalOpt = typer.Option(False, "--local",
                             help="A local-profile release: the Kubernetes part only.")


@app.command()
def grant(
    group: str | None = typer.Option(None, "--group", "-g",
                                     help="Entra group object id or display name."),
    role: str = typer.Option("data-scientist", "--role",
                             help="data-scientist (create and run flows) or viewer (read)."),
    list_: bool = typer.Option(False, "--list", help="Show who has what."),
    local: bool = GrantLocalOpt,
    settings_file: Path | None = SettingsOpt,
    outputs_file: Path | None = OutputsOpt,
    subscription: str | None = SubOpt,
    kubeconfig: str | None = KubeconfigOpt,
    context: str | None = ContextOpt,
    release: str | None = typer.Option(None, "--release", help="Release name."),
    namespace: str | None = typer.Option(None, "--namespace", "-n", help="Namespace."),
    chart: str | None = ChartOpt,
    chart_version: str | None = ChartVersionOpt,
    plain_http: bool = PlainHttpOpt,
    timeout: str = typer.Option("10m", "--timeout", help="How long helm waits."),
) -> None:
    """Onboard a team: the Kubernetes Role in the flow namespace, sign-in,
    Blob access on the Metaflow container and AKS cluster-user credentials."""
    from mfhelm import grant as grant_mod

    if list_ == (group is not None):
        raise MfhelmError("give --group GROUP, or --list")
    if group is not None:
        grant_mod.check_group_ref(group)
        grant_mod.check_role(role)
    ctx = _grant_context(local, settings_file, outputs_file, subscription, kubeconfig, context,
                         release, namespace, chart, chart_version, plain_http, timeout)
    target, source, azure = ctx
    step = _Steps()
    try:
        if list_:
            lines = grant_mod.list_grants(target, azure=azure, chart=source, timeout=timeout,
                                          progress=step)
        else:
            assert group is not None
            lines = grant_mod.grant(target, group, role, azure=azure, chart=source,
                                    timeout=timeout, progress=step).lines
    finally:
        step.close()
    for line in lines:
        typer.echo(line)


@app.command()
def revoke(
    group: str = typer.Option(..., "--group", "-g",
                              help="Entra group object id or display name."),
    local: bool = GrantLocalOpt,
    settings_file: Path | None = SettingsOpt,
    outputs_file: Path | None = OutputsOpt,
    subscription: str | None = SubOpt,
    kubeconfig: str | None = KubeconfigOpt,
    context: str | None = ContextOpt,
    release: str | None = typer.Option(None, "--release", help="Release name."),
    namespace: str | None = typer.Option(None, "--namespace", "-n", help="Namespace."),
    chart: str | None = ChartOpt,
    chart_version: str | None = ChartVersionOpt,
    plain_http: bool = PlainHttpOpt,
    timeout: str = typer.Option("10m", "--timeout", help="How long helm waits."),
) -> None:
    """Undo mfhelm grant: the group leaves the release's values and loses its
    Azure role assignments on the container and the cluster."""
    from mfhelm import grant as grant_mod

    grant_mod.check_group_ref(group)
    target, source, azure = _grant_context(local, settings_file, outputs_file, subscription,
                                           kubeconfig, context, release, namespace, chart,
                                           chart_version, plain_http, timeout)
    step = _Steps()
    try:
        outcome = grant_mod.grant(target, group, None, azure=azure, chart=source,
                                  timeout=timeout, progress=step)
    finally:
        step.close()
    for line in outcome.lines:
        typer.echo(line)


@app.command()
def doctor(
    settings_file: Path | None = SettingsOpt,
    subscription: str | None = SubOpt,
) -> None:
    """Preflight before a deploy: helm, login, providers, VM sizes, quota, PostgreSQL."""
    from rich.console import Console

    from mfhelm import doctor as doctor_mod
    from mfhelm import settings as settings_mod

    s = settings_mod.load(settings_file)
    checks = doctor_mod.run_preflight(s, subscription_id=subscription)
    Console().print(doctor_mod.render_table(checks))
    if not doctor_mod.preflight_ok(checks):
        raise MfhelmError("preflight failed: fix the rows marked FAIL, then re-run mfhelm doctor")


def _python_minor(value: str | None) -> str | None:
    from mfhelm import image as image_mod

    try:
        return None if value is None else image_mod.check_python(value)
    except MfhelmError as exc:
        raise typer.BadParameter(str(exc)) from None


image_app = typer.Typer(help="The flow image Metaflow's task pods start from.",
                        no_args_is_help=True, rich_markup_mode=None)
app.add_typer(image_app, name="image")


@image_app.command("build")
def image_build(
    requirements: Path | None = typer.Option(
        None, "--requirements", readable=False, metavar="FILE",
        help="pip requirements to add to the image (packages from an index)."),
    python: str | None = typer.Option(
        None, "--python", metavar="3.X", callback=_python_minor,
        help="The Python minor of the image (default: this Python's); match your laptops'."),
    settings_file: Path | None = SettingsOpt,
    outputs_file: Path | None = OutputsOpt,
    subscription: str | None = SubOpt,
) -> None:
    """Build the flow image in the stack's registry (ACR builds it; no Docker
    here) and record it by digest in mfhelm.toml [image] reference."""
    from mfhelm import image as image_mod
    from mfhelm import settings as settings_mod
    from mfhelm.azure.credentials import get_credential, resolve_subscription_id

    minor = image_mod.check_python(python or image_mod.default_python())
    user_requirements = image_mod.read_requirements(requirements)
    s = settings_mod.load(settings_file)
    # The user's own input first: a requirements file that does not resolve is
    # refused before any Azure sign-in or lookup.
    if user_requirements.strip():
        image_mod.check_resolves(user_requirements, minor)
    sub = resolve_subscription_id(subscription)
    registry = image_mod.registry_of(_outputs(outputs_file, s, sub), sub)
    step = _Steps()
    try:
        built = image_mod.build(settings_file, registry, python=minor,
                                user_requirements=user_requirements,
                                credential=get_credential(), echo=_echo_err, progress=step)
    finally:
        step.close()
    typer.echo(built.reference)
    _echo_err(f"recorded in {built.settings_file} [image] reference; commit it, and run "
              "`mfhelm config` (data scientists too)")


def main() -> None:
    """Console entry point: whatever the user got wrong is one line on stderr,
    `mfhelm: error: ...`: usage errors (exit 2) as well as our own
    MfhelmError (exit 1). Every such line goes through errors.redact.
    """
    # Ctrl-C and SIGTERM unwind (mfhelm.proc.on_signal): temporary files go,
    # and every child's process group is stopped, before mfhelm exits with
    # 128 + the signal's number.
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGINT, _interrupt)
    try:
        # Not standalone: click would print usage errors as three lines of
        # its own and "Aborted!"; they come here instead.
        code = app(prog_name="mfhelm", standalone_mode=False)
    except Interrupted as exc:
        if _state["debug"]:
            raise
        signum = int(exc.args[0]) if exc.args else signal.SIGINT
        note = exc.args[1] if len(exc.args) > 1 else (
            "what mfhelm started was stopped and its temporary files removed: run the "
            "command again")
        _fail(f"interrupted ({signal.Signals(signum).name}); {note}", 128 + signum)
    except Exception as exc:
        click_error = _click_error(exc)
        if click_error is not None:
            _fail(*click_error)
        err = _user_error(exc)
        if err is None or _state["debug"]:
            raise
        _fail(str(err), 1)
    finally:
        _cleanup()
    sys.exit(code if isinstance(code, int) else 0)


def _fail(message: str, code: int) -> NoReturn:
    print(f"mfhelm: error: {redact(_one_line(message))}", file=sys.stderr)
    sys.exit(code)


def _click_error(exc: Exception) -> tuple[str, int] | None:
    """The line and exit code for what click raises out of a command line:
    a usage error (with the command's --help to see), a refused prompt."""
    from typer._click import exceptions as click_exceptions

    if isinstance(exc, click_exceptions.NoArgsIsHelpError):
        exc.show()  # `mfhelm` alone: the help, as before
        sys.exit(exc.exit_code)
    if isinstance(exc, click_exceptions.UsageError):
        where = exc.ctx.command_path if exc.ctx is not None else _command_path()
        return f"{exc.format_message()} (see {where} --help)", exc.exit_code
    if isinstance(exc, click_exceptions.ClickException):
        return exc.format_message(), exc.exit_code
    if isinstance(exc, typer.Abort):
        return "aborted; nothing was changed", 1
    return None


def _interrupt(signum: int, frame: Any) -> None:
    proc.on_signal(signum, frame)


def _cleanup() -> None:
    """Whatever an exit path left: children still running, temporary
    directories still there (mfhelm.proc keeps both lists)."""
    proc.cleanup()


def _command_path() -> str:
    """`mfhelm COMMAND` from the command line, for errors click raises without
    a context (an option missing its value)."""
    commands = typer.main.get_command(app).commands  # type: ignore[attr-defined]
    command = next((arg for arg in sys.argv[1:] if arg in commands), None)
    return f"mfhelm {command}" if command else "mfhelm"


def _user_error(exc: Exception) -> MfhelmError | None:
    """Our own errors, and a Kubernetes client's failure met mid-command (the
    API server went away, a call was refused): both are one line, not a
    traceback. Anything else is a bug and keeps its traceback."""
    if isinstance(exc, MfhelmError):
        return exc
    if "kubernetes" in sys.modules:
        from mfhelm import kube

        return kube.user_error(exc)
    return None


def _one_line(message: str) -> str:
    return " ".join(line.strip() for line in message.splitlines() if line.strip())
