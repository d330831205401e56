"""kubectl for Kubernetes runs: the checks before applying, and the apply itself."""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Optional

from launcher.errors import JobError


def check_kubectl() -> str:
    """kubectl on PATH with a current context; one line naming the fix otherwise."""
    kubectl = shutil.which("kubectl")
    if not kubectl:
        raise JobError("--submit: kubectl is not on PATH; install it (and a kubeconfig for the cluster), or drop "
                       "--submit and apply RUN_DIR/k8s.yaml where kubectl is")
    out = subprocess.run([kubectl, "config", "current-context"], capture_output=True, text=True, timeout=30)
    if out.returncode != 0 or not out.stdout.strip():
        raise JobError("--submit: kubectl has no current context (kubectl config current-context); set one with "
                       "kubectl config use-context NAME, or point KUBECONFIG at the cluster's config")
    return kubectl


def _kubectl(args: list[str], what: str) -> str:
    kubectl = check_kubectl()
    out = subprocess.run([kubectl, *args], capture_output=True, text=True, timeout=300)
    if out.returncode != 0:
        lines = [ln.strip() for ln in (out.stderr or out.stdout).splitlines() if ln.strip()]
        raise JobError(f"{what}: kubectl {' '.join(args[:2])} failed: {lines[0] if lines else f'exit {out.returncode}'}")
    return out.stdout


def apply(manifest: Path, namespace: str) -> None:
    """The API server's own check first (--dry-run=server: schemas, webhooks, quotas), then the apply."""
    _kubectl(["apply", "--dry-run=server", "-n", namespace, "-f", str(manifest)], str(manifest))
    _kubectl(["apply", "-n", namespace, "-f", str(manifest)], str(manifest))


def k8s_object(run: Path) -> Optional[dict]:
    """The TrainJob or JobSet of a run (kind, name, namespace, run label) from RUN_DIR/k8s.yaml; None
    for a run that is not a Kubernetes one."""
    import yaml

    from launcher import rundir

    f = rundir.RunDir(run).k8s_yaml
    if not f.is_file():
        return None
    for doc in yaml.safe_load_all(f.read_text()):
        if isinstance(doc, dict) and doc.get("kind") in ("TrainJob", "JobSet"):
            meta = doc["metadata"]
            return {"kind": doc["kind"].lower(), "name": meta["name"], "namespace": meta.get("namespace", "default"),
                    "run": meta.get("labels", {}).get("launcher/run", ""), "configmap": f"{meta['name']}-run"}
    return None


def k8s_state(obj: dict) -> dict:
    """State (the newest true condition: Created, Running, Suspended, Complete(d), Failed...), pods
    and elapsed time of a run's object, from kubectl; state None when kubectl cannot say."""
    import datetime as dt
    import json

    try:
        out = _kubectl(["get", f"{obj['kind']}/{obj['name']}", "-n", obj["namespace"], "-o", "json"], obj["name"])
        doc = json.loads(out)
    except (JobError, ValueError) as e:
        return {"state": None, "nodes": None, "elapsed": None, "source": f"kubectl: {e}"}
    conds = [c for c in (doc.get("status") or {}).get("conditions") or [] if c.get("status") == "True"]
    conds.sort(key=lambda c: c.get("lastTransitionTime") or "")
    state = conds[-1]["type"] if conds else "Created"
    spec = doc.get("spec") or {}
    nodes = (spec.get("trainer") or {}).get("numNodes") or next(
        (rj["template"]["spec"].get("parallelism") for rj in spec.get("replicatedJobs") or []), None)
    created = (doc.get("metadata") or {}).get("creationTimestamp")
    elapsed = None
    if created:
        t0 = dt.datetime.fromisoformat(created.replace("Z", "+00:00"))
        secs = int((dt.datetime.now(dt.timezone.utc) - t0).total_seconds())
        elapsed = f"{secs // 3600}:{secs % 3600 // 60:02d}:{secs % 60:02d}"
    return {"state": state, "nodes": nodes, "elapsed": elapsed, "source": "kubectl"}


def k8s_logs_argv(obj: dict, follow: bool) -> list[str]:
    """kubectl logs of every pod of the run (the label launcher/run), each line prefixed with its pod."""
    argv = [check_kubectl(), "logs", "-n", obj["namespace"], "-l", f"launcher/run={obj['run']}", "--all-containers",
            "--prefix", "--tail=-1", "--max-log-requests=64"]
    return argv + ["-f"] if follow else argv


def k8s_cancel(obj: dict) -> None:
    """Delete the run's TrainJob or JobSet (its pods go; the claim and the run directory on it stay)
    and its ConfigMap."""
    _kubectl(["delete", "-n", obj["namespace"], f"{obj['kind']}/{obj['name']}", f"configmap/{obj['configmap']}",
              "--ignore-not-found"], obj["name"])
