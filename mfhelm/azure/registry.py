"""The stack's Azure Container Registry: ACR Tasks' quick build, its log, and
whether an image exists.

The build is what `az acr build` does, through the SDKs: ask ARM for a SAS URL
to upload the build context to (listBuildSourceUploadUrl), upload the tarball
there, schedule a DockerBuildRequest (scheduleRun), then follow the run
(runs.get) and its log blob (listLogSasUrl). The log blob grows while the
build runs; ACR sets its metadata key `Complete` (to the run's status) when it
has written the last line. Those operations exist only in the
2019-06-01-preview API of azure-mgmt-containerregistry (pinned in pyproject).

Whether an image exists is asked of the registry's data plane
(azure-containerregistry): an Entra token for ACR's audience, exchanged for an
ACR token at the registry's /oauth2/exchange, then the manifest by digest.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from mfhelm.azure.credentials import (
    auth_error,
    error_code,
    error_message,
    status_of,
    text,
)
from mfhelm.errors import MfhelmError

if TYPE_CHECKING:
    from azure.core.credentials import TokenCredential

# ACR Tasks (scheduleRun, runs, listBuildSourceUploadUrl) live in this API version.
TASKS_API_VERSION = "2019-06-01-preview"
ACR_AUDIENCE = "https://containerregistry.azure.net"
# A run's status (ACR's RunStatus) once it will not change.
FINISHED = frozenset({"Succeeded", "Failed", "Canceled", "Error", "Timeout"})


@dataclass(frozen=True)
class Registry:
    subscription_id: str
    resource_group: str
    name: str
    login_server: str


@dataclass(frozen=True)
class RunState:
    run_id: str
    status: str
    error: str = ""
    # (registry, repository, digest) of what the run pushed
    images: tuple[tuple[str, str, str], ...] = ()


def _client(credential: TokenCredential, subscription_id: str, base_url: str | None) -> Any:
    from azure.mgmt.containerregistry import ContainerRegistryManagementClient

    kwargs: dict[str, Any] = {"api_version": TASKS_API_VERSION}
    if base_url:
        kwargs["base_url"] = base_url
    return ContainerRegistryManagementClient(credential, subscription_id, **kwargs)


def _call(what: str, registry: Registry, fn: Callable[[], Any]) -> Any:
    from azure.core.exceptions import (
        ClientAuthenticationError,
        HttpResponseError,
        ResourceNotFoundError,
    )

    try:
        return fn()
    except ClientAuthenticationError as exc:
        raise auth_error(exc) from None
    except ResourceNotFoundError:
        raise MfhelmError(
            f"registry {registry.name} not found in resource group {registry.resource_group}; "
            "re-run `mfhelm deploy` (with [registry] enabled = true)") from None
    except HttpResponseError as exc:
        if status_of(exc) == 403:
            raise MfhelmError(
                f"not allowed to {what} on registry {registry.name} "
                f"({error_code(exc) or 'Forbidden'}); you need Contributor on it "
                "(ACR Tasks' scheduleRun and listBuildSourceUploadUrl)") from None
        raise MfhelmError(f"could not {what} on registry {registry.name}: "
                          f"{error_message(exc)}") from None


def upload_source(registry: Registry, context: bytes, *, credential: TokenCredential,
                  base_url: str | None = None) -> str:
    """Upload a build context (a gzipped tarball); returns the relative path
    scheduleRun takes as its source location."""
    from azure.core.exceptions import AzureError
    from azure.storage.blob import BlobClient

    client = _client(credential, registry.subscription_id, base_url)
    try:
        upload = _call("get a build source upload URL", registry,
                       lambda: client.registries.get_build_source_upload_url(
                           registry.resource_group, registry.name))
    finally:
        client.close()
    if not upload.upload_url or not upload.relative_path:
        raise MfhelmError(f"registry {registry.name} gave no upload URL for the build context")
    try:
        with BlobClient.from_blob_url(upload.upload_url) as blob:
            blob.upload_blob(context, overwrite=True)
    except AzureError as exc:
        raise MfhelmError(f"uploading the build context failed: {error_message(exc)}") from None
    return str(upload.relative_path)


def schedule_build(registry: Registry, source: str, *, image: str, python: str,
                   timeout: int, credential: TokenCredential,
                   base_url: str | None = None) -> str:
    """Queue a docker build of `source` pushing `image` (repository:tag); the run id."""
    from azure.mgmt.containerregistry.v2019_06_01_preview.models import (
        Argument,
        DockerBuildRequest,
        PlatformProperties,
    )

    request = DockerBuildRequest(
        source_location=source,
        docker_file_path="Dockerfile",
        image_names=[image],
        is_push_enabled=True,
        no_cache=False,
        arguments=[Argument(name="PYTHON_VERSION", value=python, is_secret=False)],
        platform=PlatformProperties(os="Linux", architecture="amd64"),
        timeout=timeout,
    )
    client = _client(credential, registry.subscription_id, base_url)
    try:
        run = _call("schedule a build", registry, lambda: client.registries.begin_schedule_run(
            registry.resource_group, registry.name, request).result())
    finally:
        client.close()
    if not run.run_id:
        raise MfhelmError(f"registry {registry.name} scheduled a build but named no run")
    return str(run.run_id)


def run_state(registry: Registry, run_id: str, *, credential: TokenCredential,
              base_url: str | None = None) -> RunState:
    client = _client(credential, registry.subscription_id, base_url)
    try:
        run = _call(f"read build run {run_id}", registry,
                    lambda: client.runs.get(registry.resource_group, registry.name, run_id))
    finally:
        client.close()
    images = tuple((str(i.registry or ""), str(i.repository or ""), str(i.digest or ""))
                   for i in run.output_images or [])
    return RunState(run_id, text(run.status) or "Queued", str(run.run_error_message or ""),
                    images)


def log_url(registry: Registry, run_id: str, *, credential: TokenCredential,
            base_url: str | None = None) -> str:
    client = _client(credential, registry.subscription_id, base_url)
    try:
        result = _call(f"read the log of build run {run_id}", registry,
                       lambda: client.runs.get_log_sas_url(
                           registry.resource_group, registry.name, run_id))
    finally:
        client.close()
    if not result.log_link:
        raise MfhelmError(f"registry {registry.name} gave no log link for run {run_id}")
    return str(result.log_link)


class LogTail:
    """A run's log blob read as it grows: `read()` returns the bytes added since
    the last call (b"" while there are none, or the blob is not there yet), and
    `complete` turns true once ACR has marked the blob complete and all of it
    has been read."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.offset = 0
        self.complete = False

    def read(self) -> bytes:
        from azure.core.exceptions import AzureError, ResourceNotFoundError
        from azure.storage.blob import BlobClient

        try:
            with BlobClient.from_blob_url(self.url) as blob:
                props = blob.get_blob_properties()
                size = int(props.size or 0)
                marked = any(k.lower() == "complete" for k in (props.metadata or {}))
                data = b""
                if size > self.offset:
                    data = blob.download_blob(offset=self.offset,
                                              length=size - self.offset).readall()
        except ResourceNotFoundError:
            return b""
        except AzureError as exc:
            raise MfhelmError(f"reading the build log failed: {error_message(exc)}") from None
        self.offset += len(data)
        self.complete = marked and self.offset >= size
        return data


def follow(registry: Registry, run_id: str, *, credential: TokenCredential,
           on_log: Callable[[bytes], None], poll: float = 2.0, timeout: float = 3600,
           base_url: str | None = None, sleep: Callable[[float], None] = time.sleep
           ) -> RunState:
    """Stream the run's log to `on_log` until the run has finished and its log is
    read to the end (or, for a log never marked complete, a few polls after)."""
    tail = LogTail(log_url(registry, run_id, credential=credential, base_url=base_url))
    deadline = time.monotonic() + timeout
    quiet_after_finish = 0
    while True:
        state = run_state(registry, run_id, credential=credential, base_url=base_url)
        data = tail.read()
        if data:
            on_log(data)
        if state.status in FINISHED:
            if tail.complete:
                return state
            quiet_after_finish = 0 if data else quiet_after_finish + 1
            if quiet_after_finish >= 3:
                return state
        if time.monotonic() > deadline:
            raise MfhelmError(f"build run {run_id} still {state.status} after "
                              f"{timeout:.0f}s; see it with `az acr task logs -r "
                              f"{registry.name} --run-id {run_id}`")
        sleep(poll)


# --- the data plane: does an image exist ------------------------------------------------

def manifest_exists(login_server: str, repository: str, digest: str, *,
                    credential: TokenCredential) -> bool:
    """Whether the registry holds the manifest `repository@digest`."""
    from azure.containerregistry import ContainerRegistryClient
    from azure.core.exceptions import (
        ClientAuthenticationError,
        HttpResponseError,
        ResourceNotFoundError,
    )

    client = ContainerRegistryClient(f"https://{login_server}", credential,
                                     audience=ACR_AUDIENCE)
    try:
        client.get_manifest_properties(repository, digest)
        return True
    except ResourceNotFoundError:
        return False
    except ClientAuthenticationError as exc:
        raise MfhelmError(f"registry {login_server} refused the sign-in "
                          f"({error_message(exc)}); run `az login`, and check you have "
                          "AcrPull on it") from None
    except HttpResponseError as exc:
        if status_of(exc) == 403:
            raise MfhelmError(f"not allowed to read {repository} in {login_server}; you need "
                              "AcrPull on the registry") from None
        raise MfhelmError(f"could not ask {login_server} for {repository}@{digest}: "
                          f"{error_message(exc)}") from None
    except Exception as exc:  # a registry that does not answer (DNS, TLS, connection)
        from azure.core.exceptions import ServiceRequestError

        if isinstance(exc, ServiceRequestError):
            raise MfhelmError(f"registry {login_server} did not answer "
                              f"({error_message(exc)})") from None
        raise
    finally:
        client.close()
