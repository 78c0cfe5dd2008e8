"""The local profile's Blob path on this host, run by test_e2e_local_https.py
inside its own network and mount namespaces (`unshare -rnm`): there,
localhost:10000, :8443 and :8080 are this scenario's alone (the ports `mfhelm
config --local` names), and an /etc/hosts of its own maps the in-cluster
Service names of the flow pods' Secret to 127.0.0.1.

Standalone (stdlib at import): it reads a JSON spec (argv[1]) the test wrote
from what `mfhelm install --local` put in the cluster, starts the real
Azurite with the Deployment's command and the serving certificate from
<release>-local-tls, the chart's azurite-init script, the chart's
entra-emulator script with its Deployment's settings, and
metaflow-local-service for the metadata service; then runs real Metaflow
twice: as the laptop (HOME holding exactly what `mfhelm config --local`
wrote, nothing else in the environment) and as a flow pod (no config file;
the variables of the container Metaflow compiles for Argo Workflows, over
the Secrets it names, <release>-local-flows among them). Results go to argv[2] as JSON.
"""

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time

with open(sys.argv[1]) as _f:
    spec = json.load(_f)
work = spec["workdir"]
procs = []


def start(name, argv, env):
    with open(os.path.join(work, name + ".log"), "ab") as out:
        p = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT,
                             stdin=subprocess.DEVNULL, start_new_session=True)
    procs.append(p)
    return p


def wait_port(port, proc, name):
    deadline = time.monotonic() + 60
    while True:
        if proc.poll() is not None:
            with open(os.path.join(work, name + ".log"), errors="replace") as f:
                raise SystemExit(f"{name} exited {proc.returncode}: {f.read()[-2000:]}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise SystemExit(f"{name} did not listen on {port}") from None
            time.sleep(0.1)


def base_env():
    return {"PATH": spec["path"], "LANG": "C.UTF-8", "PYTHONUNBUFFERED": "1"}


def run(argv, env, cwd, keep=6000):
    done = subprocess.run(argv, env=env, cwd=cwd, capture_output=True, text=True, timeout=600,
                          check=False)
    return {"argv": argv[1:3], "rc": done.returncode, "stdout": done.stdout[-keep:],
            "stderr": done.stderr[-6000:]}


READ = """
import json, sys
from metaflow import Flow, namespace
from metaflow.cards import get_cards
namespace(None)
run = Flow("LocalProfileFlow")[sys.argv[1]]
task = run["start"].task
cards = get_cards(task)
print(json.dumps({"answer": task.data.answer, "stdout": task.stdout,
                  "cards": len(cards), "card_html": len(cards[0].get()) if len(cards) else 0}))
"""


def main():
    results = {}
    try:
        subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
        subprocess.run(["mount", "--bind", spec["hosts_file"], "/etc/hosts"], check=True)
        # Azurite, exactly the Deployment's command but for the paths of this host.
        azurite = start("azurite", spec["azurite_argv"], base_env())
        wait_port(10000, azurite, "azurite")
        init_env = base_env() | {"AZURE_STORAGE_CONNECTION_STRING": spec["connection_string"],
                                 "REQUESTS_CA_BUNDLE": spec["ca_file"]}
        results["init"] = run([sys.executable, spec["init_script"], *spec["containers"]],
                              init_env, work)
        emulator = start("entra-emulator", [sys.executable, spec["emulator_script"]],
                         base_env() | spec["emulator_env"])
        wait_port(8443, emulator, "entra-emulator")
        metadata = start("metadata", [sys.executable, "-c", spec["metadata_serve"],
                                      os.path.join(work, "metadata"), "8080"],
                         base_env() | {"HOME": os.path.join(work, "metadata"), "USER": "md"})
        wait_port(8080, metadata, "metadata")

        # The laptop: HOME with the config `mfhelm config --local` wrote.
        laptop = base_env() | {"HOME": spec["home"], "USER": "ada"}
        results["laptop_run"] = run([sys.executable, spec["flow"], "--no-pylint", "run"],
                                    laptop, spec["flow_dir"])
        run_id = _run_id(results["laptop_run"]["stdout"] + results["laptop_run"]["stderr"])
        results["laptop_run_id"] = run_id
        if run_id:
            results["laptop_read"] = run([sys.executable, "-c", READ, run_id], laptop,
                                         spec["flow_dir"])

        # The UI backend: Metaflow without mfhelm's settings (its image has no
        # extension), DefaultAzureCredential with the Deployment's variables.
        if run_id:
            ui = base_env() | {"HOME": spec["pod_home"], "USER": "ui"} | spec["ui_env"]
            results["ui_read"] = run([sys.executable, "-c", READ, run_id], ui, spec["flow_dir"])

        # A flow pod: the container Metaflow compiles for Argo Workflows from
        # this config (`argo-workflows create --only-json`): its explicit
        # variables (the laptop's Blob URL among them) over its envFrom
        # Secrets, as Kubernetes orders them; no config file.
        compiled = run([sys.executable, spec["flow"], "--no-pylint", "argo-workflows", "create",
                        "--only-json"], laptop, spec["flow_dir"], keep=10**7)
        results["argo_json"] = {k: compiled[k] for k in ("rc", "stderr")}
        if compiled["rc"] != 0:
            return
        out = compiled["stdout"]
        template = json.loads(out[out.index("{"):])
        container = next(t["container"] for t in template["spec"]["templates"]
                         if t.get("name") == "start" and "container" in t)
        refs = [e["secretRef"]["name"] for e in container.get("envFrom", []) if "secretRef" in e]
        explicit = {e["name"]: e["value"] for e in container.get("env", [])
                    if e.get("value") is not None}
        results["pod_secret_refs"] = refs
        results["pod_explicit_env"] = explicit
        pod = base_env() | {"HOME": spec["pod_home"], "USER": "pod"}
        for name in refs:
            pod |= spec["secrets"].get(name, {})
        pod |= explicit
        results["pod_run"] = run([sys.executable, spec["flow"], "--no-pylint", "run"], pod,
                                 spec["flow_dir"])
        pod_id = _run_id(results["pod_run"]["stdout"] + results["pod_run"]["stderr"])
        results["pod_run_id"] = pod_id
        if pod_id:
            results["pod_read"] = run([sys.executable, "-c", READ, pod_id], pod,
                                      spec["flow_dir"])
    finally:
        for p in procs:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGTERM)
        for p in procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
        with open(sys.argv[2], "w") as f:
            json.dump(results, f)


def _run_id(text):
    for line in text.splitlines():
        if "local-profile-log " in line:
            return line.rsplit("local-profile-log ", 1)[1].strip()
    return None


if __name__ == "__main__":
    main()
