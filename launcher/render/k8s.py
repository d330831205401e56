"""Kubernetes manifests, as pure functions of a Plan: a Kubeflow Trainer v2 ``TrainJob`` or a
``JobSet``, with a ``ConfigMap`` holding the run directory's files.

One pod per node. Its container runs ``launcher k8s-node`` (:mod:`launcher.execute.k8s_node`),
which makes the run directory on the shared claim from the ConfigMap, fetches hub ids once (node
0), takes the rendezvous from the environment the controller injects (TrainJob: ``PET_*``; JobSet:
the Indexed Job's ``JOB_COMPLETION_INDEX`` and the headless service's hostnames), and starts
torchrun. It is the container's PID 1: Kubernetes' SIGTERM reaches it alone, never torchrun
(which would SIGKILL the workers 30 s later, pytorch#119856); it asks the trainer to stop at an
agreed step and checkpoint, then exits ``STOPPED_EXIT``, which the pod failure policy turns into a
restart that spends no ``maxRestarts`` (JobSet: ``RestartJobSetAndIgnoreMaxRestarts`` on the Job
failure reason ``PodFailurePolicy``, as for a pod's ``DisruptionTarget`` condition). Any other
failure spends one.

Everything from the job reaches the manifest as YAML data (no shell): names are made valid DNS-1123
names, label values valid label values.
"""
from __future__ import annotations

import hashlib
import json
import math
import re
from typing import Any, Optional

from launcher.errors import JobError
from launcher.plan import Plan

CONTAINER = "node"  # the container name Trainer's torch runtimes use (runtimePatches patch it by name)
REPLICATED_JOB = "node"
RDZV_PORT = 29500  # Trainer's PET_MASTER_PORT
STOPPED_EXIT = 75  # EX_TEMPFAIL: the trainer stopped at a checkpoint on SIGTERM; restart for free
TORCHRUN_KILL_S = 30  # torchrun SIGKILLs its workers this long after forwarding SIGTERM (pytorch#119856)
GRACE_MARGIN_S = 10  # the grace period beyond the forecast stop (the step in flight and the save)
CHECKPOINT_WRITE_GB_S = 1.0  # assumed write rate of a node to the shared claim, GB/s
RUN_FILES_MOUNT = "/etc/launcher/run"  # the ConfigMap's files in the container
NAME_MAX = 40  # JobSet names pods <name>-node-<job>-<pod>: 63 characters at most, with the suffixes
CONFIGMAP_MAX_BYTES = 1_000_000
QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
FLAVORS = ("trainjob", "jobset")

_LABEL_BAD = re.compile(r"[^A-Za-z0-9_.-]+")


def dns_name(text: str, limit: int = NAME_MAX) -> str:
    """``text`` as a DNS-1123 label: lower case letters, digits and '-', starting with a letter and
    ending alphanumeric, at most ``limit`` characters. A name that had to change gets a hash of the
    original as suffix, so two jobs whose names differ only in what was dropped stay apart."""
    name = re.sub(r"[^a-z0-9-]+", "-", text.lower()).strip("-")
    name = re.sub(r"-{2,}", "-", name)
    if not name or not name[0].isalpha():
        name = f"j-{name}".rstrip("-")
    if name == text and len(name) <= limit:
        return name
    digest = hashlib.sha256(text.encode()).hexdigest()[:8]
    return f"{name[:limit - 9].rstrip('-')}-{digest}"


def label_value(text: str) -> str:
    """A valid label value (at most 63 of [A-Za-z0-9_.-], alphanumeric at both ends; empty is valid)."""
    v = _LABEL_BAD.sub("-", text).strip("-_.")
    if len(v) > 63 or v != text:
        v = f"{v[:54].rstrip('-_.')}-{hashlib.sha256(text.encode()).hexdigest()[:8]}".strip("-_.")
    return v


def checkpoint_bytes_per_node(plan: Plan) -> Optional[int]:
    """What one node writes to stop: its ranks' share of the trainable model states (weights in the
    compute dtype, fp32 masters and Adam's two moments: 2 + 12 bytes each), and for full fine-tuning
    the weights once more in the checkpoint's own copy. None without the model's size."""
    m = plan.model
    if m is None:
        return None
    trainable = (plan.params or {}).get("trainable") or m.n_trainable_params or m.n_params
    per_param = 14 if plan.job.train.method == "lora" else 16
    return int(math.ceil(trainable * per_param / plan.nodes))


def stop_forecast_s(plan: Plan) -> tuple[Optional[float], str]:
    """(seconds from SIGTERM to a saved checkpoint, how): the step in flight and the save."""
    nbytes = checkpoint_bytes_per_node(plan)
    step = plan.forecast.step_time_s if plan.forecast else None
    if nbytes is None:
        return None, "the model's size is not known here"
    save = nbytes / (CHECKPOINT_WRITE_GB_S * 1e9)
    how = f"save {nbytes / 1e9:.3g} GB per node at {CHECKPOINT_WRITE_GB_S:g} GB/s = {save:.3g} s"
    if step is None:
        return save, how + " (step time not forecast)"
    return step + save, f"one step {step:.3g} s + " + how


def grace_period(plan: Plan) -> tuple[int, str]:
    """terminationGracePeriodSeconds and its derivation. The job's own value wins when the stop
    fits in it; a derived one must fit under torchrun's worker kill."""
    k8s = plan.job.cluster.k8s
    stop, how = stop_forecast_s(plan)
    if k8s.grace_period_s is not None:
        if stop is not None and stop > k8s.grace_period_s:
            raise JobError(f"cluster.k8s.grace_period_s: {k8s.grace_period_s} s is shorter than the stop checkpoint's "
                           f"forecast {stop:.0f} s ({how}); raise it, or lower train.save_every_steps to bound what a "
                           "kill before the save loses")
        return k8s.grace_period_s, f"grace_period_s = {k8s.grace_period_s} (cluster.k8s.grace_period_s)"
    if stop is None:
        return TORCHRUN_KILL_S, f"grace_period_s = {TORCHRUN_KILL_S} (torchrun's worker kill; stop not forecast: {how})"
    grace = int(math.ceil(stop + GRACE_MARGIN_S))
    if grace > TORCHRUN_KILL_S:
        raise JobError(f"cluster.k8s: the stop checkpoint's forecast {stop:.0f} s ({how}) plus a {GRACE_MARGIN_S} s "
                       f"margin does not fit under torchrun's {TORCHRUN_KILL_S} s worker kill; lower "
                       "train.save_every_steps (a kill then loses fewer steps), use async checkpointing, or set "
                       "cluster.k8s.grace_period_s to accept the longer stop")
    return grace, f"grace_period_s = ceil(stop forecast {stop:.3g} s ({how}) + margin {GRACE_MARGIN_S}) = {grace}"


def run_paths(plan: Plan, run_name: str) -> str:
    """The run directory inside the pods: on the claim, under the job's output_dir when relative."""
    mount = plan.job.cluster.k8s.mount_path.rstrip("/") or "/"
    out = plan.job.output_dir
    base = out if out.startswith("/") else f"{mount}/{out}"
    return f"{base.rstrip('/')}/{run_name}"


def _labels(plan: Plan, name: str, run_name: str) -> dict[str, str]:
    labels = {"app.kubernetes.io/managed-by": "launcher", "app.kubernetes.io/name": name,
              "launcher/job": label_value(plan.job.name), "launcher/run": label_value(run_name)}
    if plan.job.cluster.k8s.queue:
        labels[QUEUE_LABEL] = label_value(plan.job.cluster.k8s.queue)
    return labels


def _env(plan: Plan, run_dir: str, flavor: str, name: str) -> list[dict[str, Any]]:
    from launcher.render.torchrun import render_env

    k8s = plan.job.cluster.k8s
    mount = k8s.mount_path.rstrip("/")
    env = render_env(plan, run_dir=run_dir)
    env.update({"LAUNCHER_CACHE": f"{mount}/.cache/launcher", "HF_HOME": f"{mount}/.cache/huggingface",
                "LAUNCHER_RUN_DIR": run_dir, "LAUNCHER_RUN_FILES": RUN_FILES_MOUNT, "LAUNCHER_K8S_FLAVOR": flavor})
    if flavor == "jobset":  # what Trainer's controller injects as PET_* for a TrainJob
        env.update({"LAUNCHER_NNODES": str(plan.nodes), "LAUNCHER_MASTER_ADDR": f"{name}-{REPLICATED_JOB}-0-0.{name}",
                    "LAUNCHER_MASTER_PORT": str(RDZV_PORT)})
    env.update(k8s.env)
    return [{"name": k, "value": v} for k, v in sorted(env.items())]


def _resources(plan: Plan) -> dict[str, Any]:
    k8s = plan.job.cluster.k8s
    limits: dict[str, Any] = {}
    if plan.device == "cuda":
        limits["nvidia.com/gpu"] = str(plan.procs_per_node)  # a quantity: the API keeps it as text
    if k8s.cpu:
        limits["cpu"] = k8s.cpu
    if k8s.memory:
        limits["memory"] = k8s.memory
    return {"limits": limits, "requests": dict(limits)} if limits else {}


def _pod_extras(plan: Plan, grace: int) -> dict[str, Any]:
    """The pod spec fields every flavour sets the same way (TrainJob: through runtimePatches)."""
    k8s = plan.job.cluster.k8s
    spec: dict[str, Any] = {"terminationGracePeriodSeconds": grace}
    if k8s.service_account:
        spec["serviceAccountName"] = k8s.service_account
    if k8s.node_selector:
        spec["nodeSelector"] = dict(k8s.node_selector)
    if k8s.tolerations:
        spec["tolerations"] = [
            {k: v for k, v in (("key", t.key), ("operator", t.operator), ("value", t.value), ("effect", t.effect),
                               ("tolerationSeconds", t.toleration_seconds)) if v is not None}
            for t in k8s.tolerations]
    return spec


def _volumes(plan: Plan, configmap: str) -> tuple[list[dict], list[dict]]:
    k8s = plan.job.cluster.k8s
    volumes = [{"name": "run-files", "configMap": {"name": configmap}}]
    mounts = [{"name": "run-files", "mountPath": RUN_FILES_MOUNT, "readOnly": True}]
    if k8s.pvc:
        volumes.append({"name": "shared", "persistentVolumeClaim": {"claimName": k8s.pvc}})
        mounts.append({"name": "shared", "mountPath": k8s.mount_path})
    return volumes, mounts


def pod_command(run_dir: str) -> list[str]:
    return ["launcher", "k8s-node", run_dir]


def _configmap(plan: Plan, name: str, labels: dict, files: dict[str, str]) -> dict[str, Any]:
    size = sum(len(v.encode()) for v in files.values())
    if size > CONFIGMAP_MAX_BYTES:
        raise JobError(f"cluster.k8s: the run directory's files are {size:,} bytes, more than a ConfigMap holds "
                       f"({CONFIGMAP_MAX_BYTES:,}); put them on the claim (cluster.k8s.pvc) yourself")
    return {"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": f"{name}-run", "namespace": plan.job.cluster.k8s.namespace, "labels": labels},
            "data": dict(sorted(files.items()))}


def _container(plan: Plan, run_dir: str, flavor: str, name: str, mounts: list[dict]) -> dict[str, Any]:
    k8s = plan.job.cluster.k8s
    c: dict[str, Any] = {"name": CONTAINER, "image": k8s.image, "command": pod_command(run_dir),
                         "workingDir": k8s.mount_path, "env": _env(plan, run_dir, flavor, name), "volumeMounts": mounts}
    res = _resources(plan)
    if res:
        c["resources"] = res
    return c


def jobset_manifest(plan: Plan, name: str, run_name: str, grace: int, configmap: str) -> dict[str, Any]:
    k8s = plan.job.cluster.k8s
    run_dir = run_paths(plan, run_name)
    labels = _labels(plan, name, run_name)
    volumes, mounts = _volumes(plan, configmap)
    pod_spec = {"restartPolicy": "Never", **_pod_extras(plan, grace),
                "containers": [_container(plan, run_dir, "jobset", name, mounts)], "volumes": volumes}
    if k8s.priority_class:
        pod_spec["priorityClassName"] = k8s.priority_class
    job = {
        "completionMode": "Indexed", "completions": plan.nodes, "parallelism": plan.nodes, "backoffLimit": 0,
        # a stop checkpoint (the entry's exit code) and a disruption (preemption, a drain) fail the Job with the
        # reason PodFailurePolicy, which the JobSet restarts without spending maxRestarts
        "podFailurePolicy": {"rules": [
            {"action": "FailJob", "onExitCodes": {"containerName": CONTAINER, "operator": "In",
                                                  "values": [STOPPED_EXIT]}},
            {"action": "FailJob", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]},
        ]},
        "template": {"metadata": {"labels": {k: v for k, v in labels.items() if k != QUEUE_LABEL}},
                     "spec": pod_spec},
    }
    return {
        "apiVersion": "jobset.x-k8s.io/v1alpha2", "kind": "JobSet",
        "metadata": {"name": name, "namespace": k8s.namespace, "labels": labels,
                     "annotations": {"launcher/run-dir": run_dir}},
        "spec": {
            "network": {"enableDNSHostnames": True, "subdomain": name},
            "successPolicy": {"operator": "All", "targetReplicatedJobs": [REPLICATED_JOB]},
            "failurePolicy": {"maxRestarts": plan.job.train.max_restarts, "restartStrategy": "Recreate", "rules": [
                {"name": "stopped", "action": "RestartJobSetAndIgnoreMaxRestarts",
                 "onJobFailureReasons": ["PodFailurePolicy"]},
                {"name": "failed", "action": "RestartJobSet"},
            ]},
            "replicatedJobs": [{"name": REPLICATED_JOB, "replicas": 1, "template": {"metadata": {"labels": labels},
                                                                                    "spec": job}}],
        },
    }


LAUNCHER_RUNTIME = "launcher"  # cluster.k8s.runtime: write a TrainingRuntime with launcher's failure policy


def training_runtime(plan: Plan, name: str, run_name: str, grace: int, configmap: str) -> dict[str, Any]:
    """A namespaced TrainingRuntime (``cluster.k8s.runtime: launcher``): torch's ML policy and the
    JobSet launcher's own flavour writes (its failure policy: a stop checkpoint or a disruption
    restarts without spending a restart). The TrainJob's trainer sets the image, command,
    environment and resources on its ``node`` container."""
    js = jobset_manifest(plan, name, run_name, grace, configmap)
    spec = js["spec"]
    job = spec["replicatedJobs"][0]["template"]["spec"]
    for key in ("completions", "parallelism", "completionMode"):  # Trainer's torch plugin sets the shape
        job.pop(key, None)
    container = job["template"]["spec"]["containers"][0]
    job["template"]["spec"]["containers"] = [{"name": CONTAINER, "image": container["image"]}]
    return {
        "apiVersion": "trainer.kubeflow.org/v1alpha1", "kind": "TrainingRuntime",
        "metadata": {"name": f"{name}-runtime", "namespace": plan.job.cluster.k8s.namespace,
                     "labels": _labels(plan, name, run_name)},
        "spec": {"mlPolicy": {"numNodes": plan.nodes, "torch": {}},
                 "template": {"spec": {"failurePolicy": spec["failurePolicy"],
                                       "replicatedJobs": [{"name": REPLICATED_JOB, "template": {
                                           "metadata": {"labels": {"trainer.kubeflow.org/trainjob-ancestor-step":
                                                                   "trainer"}},
                                           "spec": job}}]}}},
    }


def trainjob_manifest(plan: Plan, name: str, run_name: str, grace: int, configmap: str) -> dict[str, Any]:
    k8s = plan.job.cluster.k8s
    own = k8s.runtime == LAUNCHER_RUNTIME
    run_dir = run_paths(plan, run_name)
    labels = _labels(plan, name, run_name)
    volumes, mounts = _volumes(plan, configmap)
    c = _container(plan, run_dir, "trainjob", name, mounts)
    trainer: dict[str, Any] = {"image": k8s.image, "command": c["command"], "env": c["env"], "numNodes": plan.nodes}
    if c.get("resources"):
        trainer["resourcesPerNode"] = c["resources"]
    pod = {**_pod_extras(plan, grace), "volumes": volumes,
           "containers": [{"name": CONTAINER, "volumeMounts": mounts}]}
    return {
        "apiVersion": "trainer.kubeflow.org/v1alpha1", "kind": "TrainJob",
        "metadata": {"name": name, "namespace": k8s.namespace, "labels": labels,
                     "annotations": {"launcher/run-dir": run_dir}},
        "spec": {
            "runtimeRef": ({"name": f"{name}-runtime", "apiGroup": "trainer.kubeflow.org", "kind": "TrainingRuntime"}
                           if own else {"name": k8s.runtime, "apiGroup": "trainer.kubeflow.org",
                                        "kind": "ClusterTrainingRuntime"}),
            "trainer": trainer,
            "runtimePatches": [{"manager": "launcher", "trainingRuntimeSpec": {"template": {"spec": {
                "replicatedJobs": [{"name": REPLICATED_JOB, "template": {"spec": {"template": {
                    "metadata": {"labels": {k: v for k, v in labels.items() if k != QUEUE_LABEL}},
                    "spec": pod}}}}]}}}}],
        },
    }


def k8s_documents(plan: Plan, run_name: str, files: dict[str, str], flavor: str) -> tuple[list[dict], list[str]]:
    """(the manifest's documents: the ConfigMap, then the TrainJob or JobSet; the derivations)."""
    if flavor not in FLAVORS:
        raise JobError(f"--flavor: {flavor!r}: choose trainjob or jobset")
    k8s = plan.job.cluster.k8s
    if not k8s.image:
        raise JobError("cluster.k8s.image: required by launcher k8s: an image with launcher installed, e.g. "
                       "cluster.k8s.image=registry.example.com/launcher:0.3")
    name = dns_name(plan.job.cluster.slurm.job_name or plan.job.name)
    grace, how = grace_period(plan)
    labels = _labels(plan, name, run_name)
    cm = _configmap(plan, name, labels, files)
    build = jobset_manifest if flavor == "jobset" else trainjob_manifest
    derivations = [f"name = {name} (DNS-1123, from job name {plan.job.name!r})", how]
    docs = [cm]
    if flavor == "trainjob" and k8s.runtime == LAUNCHER_RUNTIME:
        docs.append(training_runtime(plan, name, run_name, grace, cm["metadata"]["name"]))
        derivations.append("restarts: the TrainingRuntime written here (cluster.k8s.runtime: launcher): a stop "
                           "checkpoint or a disruption restarts without spending a restart")
    elif flavor == "trainjob":
        derivations.append(f"restarts: the runtime {k8s.runtime!r} decides (its JobSet failurePolicy); "
                           "cluster.k8s.runtime=launcher or --flavor jobset write launcher's own")
    return [*docs, build(plan, name, run_name, grace, cm["metadata"]["name"])], derivations


def _dumper():
    import yaml

    class Dumper(yaml.SafeDumper):
        pass

    def text(dumper, value: str):  # the ConfigMap's files as literal blocks: readable, diffable
        return dumper.represent_scalar("tag:yaml.org,2002:str", value, style="|" if "\n" in value else None)

    Dumper.add_representer(str, text)
    return Dumper


def render_k8s(plan: Plan, run_name: str, files: dict[str, str], flavor: str = "trainjob") -> str:
    """k8s.yaml: a header saying what it is, then the documents."""
    import yaml

    _Dumper = _dumper()
    docs, derivations = k8s_documents(plan, run_name, files, flavor)
    head = [f"# Generated by `launcher k8s --flavor {flavor}` from the job's cluster.k8s section: edit the job, "
            "not this file.", f"# kubectl apply -f k8s.yaml   (namespace {plan.job.cluster.k8s.namespace})"]
    head += [f"# {d}" for d in derivations]
    body = "---\n".join(yaml.dump(json.loads(json.dumps(d)), Dumper=_Dumper, sort_keys=False, width=120) for d in docs)
    return "\n".join(head) + "\n---\n" + body
