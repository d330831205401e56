"""Kubernetes manifests without a cluster: both flavours against the published CRD schemas (Kubeflow
Trainer v2.3.0's TrainJob, JobSet v0.12.0's JobSet: tests/data/k8s/, with their source), the pod
specs against the Kubernetes client's own models, golden files, names, and the grace period."""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
import yaml

from launcher.errors import JobError
from launcher.spec import load_job
from tests.helpers import check_golden

DATA = Path(__file__).resolve().parent.parent / "data" / "k8s"
IMAGE = "cluster.k8s.image=registry.example.com/launcher:0.3"


def crd_schema(name: str) -> dict:
    return json.loads((DATA / f"{name}.crd-schema.json").read_text())


def strict(schema):
    """The CRD's structural schema, with unknown fields refused: the API server would prune them
    silently (a typo in our manifest would be dropped, not reported)."""
    if isinstance(schema, list):
        return [strict(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: strict(v) for k, v in schema.items()}
    if "properties" in out and "additionalProperties" not in out and not out.get("x-kubernetes-preserve-unknown-fields"):
        out["additionalProperties"] = False
    return out


def validate(doc: dict, crd: str) -> None:
    import jsonschema

    data = crd_schema(crd)
    src = data["source"]
    assert doc["apiVersion"] == f"{src['group']}/{src['version']}" and doc["kind"] == src["kind"]
    jsonschema.validate(doc, strict(data["openAPIV3Schema"]), cls=jsonschema.Draft7Validator)


def check_pod(template: dict, partial: bool = False) -> None:
    """A pod template round-trips through the Kubernetes client's V1PodTemplateSpec unchanged: every
    field is one Kubernetes knows, of the type it expects (required fields present, unless ``partial``:
    a TrainJob's patch names its container and nothing else)."""
    from kubernetes.client import ApiClient, Configuration

    config = Configuration()
    config.client_side_validation = not partial
    api = ApiClient(config)
    obj = api._ApiClient__deserialize(template, "V1PodTemplateSpec")
    assert api.sanitize_for_serialization(obj) == template


def render(*overrides: str, flavor: str) -> list[dict]:
    from launcher.prepare import k8s_files

    spec = load_job(None, [IMAGE, "cluster.k8s.pvc=shared", *overrides])
    _, files = k8s_files(spec, "demo-20261207-000000", flavor=flavor)
    return list(yaml.safe_load_all(files["k8s.yaml"]))


SHAPES = [
    ("cluster.nodes=1", "train.method=lora", "parallel.strategy=zero", "parallel.zero_stage=3"),
    ("cluster.nodes=2", "train.method=full", "parallel.strategy=fsdp"),
    ("cluster.nodes=16", "train.method=lora", "parallel.strategy=fsdp"),
    ("cluster.nodes=16", "train.method=full", "parallel.strategy=zero", "parallel.zero_stage=3"),
]


@pytest.mark.parametrize("flavor", ["trainjob", "jobset"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "-".join(x.split("=")[1] for x in s))
def test_manifests_pass_the_crd_schemas_and_the_pod_models(flavor, shape):
    cm, job = render(*shape, "cluster.gpus_per_node=8", "train.micro_batch_size=1", "train.global_batch_size=256", "cluster.accelerator=H100-SXM", "cluster.k8s.queue=team-a",
                     "cluster.k8s.node_selector={nvidia.com/gpu.product: NVIDIA-H100-80GB-HBM3}",
                     "cluster.k8s.tolerations=[{key: nvidia.com/gpu, operator: Exists, effect: NoSchedule}]",
                     "cluster.k8s.service_account=trainer", flavor=flavor)
    assert cm["kind"] == "ConfigMap" and set(cm["data"]) >= {"job.yaml", "plan.json"}
    nodes = int(shape[0].split("=")[1])
    assert job["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "team-a"
    if flavor == "trainjob":
        validate(job, "trainjob")
        spec = job["spec"]
        assert spec["trainer"]["numNodes"] == nodes and spec["trainer"]["resourcesPerNode"]["limits"] == \
            {"nvidia.com/gpu": "8"}
        assert spec["runtimeRef"] == {"name": "torch-distributed", "apiGroup": "trainer.kubeflow.org",
                                      "kind": "ClusterTrainingRuntime"}
        pod = spec["runtimePatches"][0]["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"][0]["template"][
            "spec"]["template"]
        check_pod(pod, partial=True)
        env = {e["name"] for e in spec["trainer"]["env"]}
        assert "LAUNCHER_MASTER_ADDR" not in env  # the controller injects PET_*
    else:
        validate(job, "jobset")
        rj = job["spec"]["replicatedJobs"][0]
        assert rj["replicas"] == 1 and rj["template"]["spec"]["completions"] == nodes == \
            rj["template"]["spec"]["parallelism"] and rj["template"]["spec"]["completionMode"] == "Indexed"
        pod = rj["template"]["spec"]["template"]
        check_pod(pod)
        c = pod["spec"]["containers"][0]
        assert c["resources"]["limits"] == {"nvidia.com/gpu": "8"}
        env = {e["name"]: e["value"] for e in c["env"]}
        assert env["LAUNCHER_MASTER_ADDR"] == "demo-node-0-0.demo" and env["LAUNCHER_NNODES"] == str(nodes)
        rules = job["spec"]["failurePolicy"]["rules"]
        assert rules[0]["action"] == "RestartJobSetAndIgnoreMaxRestarts"
        assert rules[0]["onJobFailureReasons"] == ["PodFailurePolicy"]
        pfp = rj["template"]["spec"]["podFailurePolicy"]["rules"]
        assert pfp[0]["onExitCodes"]["values"] == [75] and pfp[1]["onPodConditions"][0]["type"] == "DisruptionTarget"
        assert pod["spec"]["restartPolicy"] == "Never"  # what a podFailurePolicy requires


@pytest.mark.parametrize("flavor", ["trainjob", "jobset"])
def test_golden_manifests(flavor):
    """The TrainJob/JobSet document as written (the ConfigMap's files are the run's job and plan,
    tested elsewhere: here only their names)."""
    cm, job = render("cluster.nodes=2", "cluster.device=cpu", "train.micro_batch_size=4", "cluster.k8s.cpu=4",
                     "cluster.k8s.memory=16Gi", "cluster.k8s.env={WANDB_MODE: offline}", flavor=flavor)
    text = yaml.safe_dump({"configmap_files": sorted(cm["data"]), "job": job}, sort_keys=False, width=120)
    check_golden(f"k8s_{flavor}.yaml", text)


def test_a_schema_violation_is_caught():
    """The validator refuses what the API server would: a wrong type, an unknown field."""
    import jsonschema

    _, job = render(flavor="jobset")
    job["spec"]["failurePolicy"]["maxRestarts"] = "three"
    with pytest.raises(jsonschema.ValidationError):
        validate(job, "jobset")
    _, job = render(flavor="trainjob")
    job["spec"]["trainer"]["numNode"] = 2
    with pytest.raises(jsonschema.ValidationError):
        validate(job, "trainjob")
    _, job = render(flavor="jobset")
    pod = job["spec"]["replicatedJobs"][0]["template"]["spec"]["template"]
    pod["spec"]["containers"][0]["envv"] = []
    with pytest.raises(AssertionError):
        check_pod(pod)


def test_plain_names_are_kept():
    from launcher.render.k8s import dns_name

    assert dns_name("my-job-2") == "my-job-2"


def test_the_grace_period_comes_from_the_stop_forecast_and_must_fit_torchruns_kill():
    from launcher.prepare.planning import plan_without_data
    from launcher.render.k8s import grace_period

    small = load_job(None, [IMAGE, "cluster.accelerator=H100-SXM", "train.max_steps=10"])
    _, plan = plan_without_data(small, "cuda", here=False, absolute=False)
    grace, how = grace_period(plan)
    assert 10 < grace <= 30 and "one step" in how and "save" in how
    big = load_job(None, [IMAGE, "cluster.accelerator=H100-SXM", "train.max_steps=10", "model.path=demo:tiny-llama",
                          "cluster.k8s.grace_period_s=5"])
    _, plan = plan_without_data(big, "cuda", here=False, absolute=False)
    assert grace_period(plan)[0] == 5  # the job's own value, when the stop fits in it
    from launcher.render import k8s as K

    slow = plan.model_copy(update={"job": plan.job.model_copy(update={"cluster": plan.job.cluster.model_copy(
        update={"k8s": plan.job.cluster.k8s.model_copy(update={"grace_period_s": None})})})})
    old = K.CHECKPOINT_WRITE_GB_S
    K.CHECKPOINT_WRITE_GB_S = 1e-7  # a checkpoint that takes minutes to write
    try:
        with pytest.raises(JobError, match="does not fit under torchrun's 30 s worker kill; lower "
                                           "train.save_every_steps"):
            grace_period(slow)
    finally:
        K.CHECKPOINT_WRITE_GB_S = old


def test_run_directory_and_cache_live_on_the_claim():
    _, job = render("output_dir=runs", "cluster.k8s.mount_path=/mnt/shared", flavor="jobset")
    pod = job["spec"]["replicatedJobs"][0]["template"]["spec"]["template"]["spec"]
    c = pod["containers"][0]
    env = {e["name"]: e["value"] for e in c["env"]}
    assert c["command"] == ["launcher", "k8s-node", "/mnt/shared/runs/demo-20261207-000000"]
    assert env["LAUNCHER_CACHE"] == "/mnt/shared/.cache/launcher" and env["HF_HOME"] == "/mnt/shared/.cache/huggingface"
    assert c["workingDir"] == "/mnt/shared"
    assert {"name": "shared", "persistentVolumeClaim": {"claimName": "shared"}} in pod["volumes"]


def test_status_logs_and_cancel_go_through_kubectl(tmp_path, monkeypatch):
    """No cluster here: a kubectl on PATH that records what it is asked and answers as the API
    server would (a JobSet with a Running condition). The commands must ask for the run's object,
    its pods by label, and delete the object with its ConfigMap."""
    import subprocess

    calls = tmp_path / "calls"
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    answer = json.dumps({"metadata": {"creationTimestamp": "2026-12-07T00:00:00Z"},
                         "spec": {"replicatedJobs": [{"template": {"spec": {"parallelism": 2}}}]},
                         "status": {"conditions": [
                             {"type": "StartupPolicyCompleted", "status": "True", "lastTransitionTime": "2026-12-07T00:00:01Z"},
                             {"type": "Running", "status": "True", "lastTransitionTime": "2026-12-07T00:00:02Z"}]}})
    (bin_dir / "kubectl").write_text(f"""#!/bin/sh
echo "$*" >> {calls}
case "$1" in
  config) echo test-context ;;
  get) echo '{answer}' ;;
  logs) echo "[pod/demo-node-0-0/node] step 3/24" ;;
esac
""")
    (bin_dir / "kubectl").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    run = tmp_path / "run"
    env = dict(os.environ)
    out = subprocess.run([sys.executable, "-m", "launcher", "k8s", "--flavor", "jobset", "--run-dir", str(run), IMAGE,
                          "cluster.nodes=2", "cluster.device=cpu", "train.micro_batch_size=4"],
                         capture_output=True, text=True, env=env, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "apply with: kubectl apply -f" in out.stdout and (run / "k8s.yaml").is_file()
    for args in (["status", "--json", str(run)], ["logs", str(run)], ["cancel", str(run)]):
        out = subprocess.run([sys.executable, "-m", "launcher", *args], capture_output=True, text=True, env=env)
        assert out.returncode == 0, out.stderr
        if args[0] == "status":
            st = json.loads(out.stdout)
            assert st["job_id"] == "jobset/demo" and st["state"] == "Running" and st["nodes"] == 2, st
        if args[0] == "logs":
            assert "[pod/demo-node-0-0/node] step 3/24" in out.stdout
    lines = calls.read_text().splitlines()
    assert "get jobset/demo -n default -o json" in lines
    assert any(x.startswith(f"logs -n default -l launcher/run={run.name} --all-containers --prefix") for x in lines)
    assert "delete -n default jobset/demo configmap/demo-run --ignore-not-found" in lines


def test_a_trainjob_can_bring_launchers_failure_policy_in_its_own_runtime():
    """cluster.k8s.runtime=launcher: a namespaced TrainingRuntime beside the TrainJob (Trainer's CRD
    schema accepts it), with the JobSet failure policy and the Job's pod failure policy of the
    jobset flavour; the TrainJob runs on it."""
    cm, runtime, job = render("cluster.k8s.runtime=launcher", "cluster.nodes=2", "train.micro_batch_size=4",
                              flavor="trainjob")
    validate(runtime, "trainingruntime")
    validate(job, "trainjob")
    assert job["spec"]["runtimeRef"] == {"name": "demo-runtime", "apiGroup": "trainer.kubeflow.org",
                                         "kind": "TrainingRuntime"}
    spec = runtime["spec"]
    assert spec["mlPolicy"] == {"numNodes": 2, "torch": {}}
    assert spec["template"]["spec"]["failurePolicy"]["rules"][0]["action"] == "RestartJobSetAndIgnoreMaxRestarts"
    rj = spec["template"]["spec"]["replicatedJobs"][0]
    assert rj["name"] == "node" and rj["template"]["spec"]["podFailurePolicy"]["rules"][0]["onExitCodes"]["values"] == [75]
    check_pod(rj["template"]["spec"]["template"])


def test_the_pod_takes_its_rendezvous_from_what_the_controller_injects():
    """TrainJob: Trainer's PET_* variables; JobSet: the Indexed Job's JOB_COMPLETION_INDEX and the
    head the manifest names. A pod's own address is the head's hostname with its index; node 0
    hosts the c10d store (said, not guessed from hostnames)."""
    from launcher.execute.k8s_node import rendezvous, torchrun_argv
    from launcher.prepare.planning import plan_without_data

    pet = {"PET_NNODES": "2", "PET_NODE_RANK": "1", "PET_MASTER_ADDR": "llama-node-0-0.llama",
           "PET_MASTER_PORT": "29500", "PET_NPROC_PER_NODE": "8"}
    assert rendezvous(pet, 2) == (1, 2, "llama-node-0-0.llama", 29500, "llama-node-0-1.llama")
    js = {"JOB_COMPLETION_INDEX": "0", "LAUNCHER_NNODES": "16", "LAUNCHER_MASTER_ADDR": "j-node-0-0.j",
          "LAUNCHER_MASTER_PORT": "29500"}
    assert rendezvous(js, 16) == (0, 16, "j-node-0-0.j", 29500, "j-node-0-0.j")
    with pytest.raises(JobError, match="node rank 3 is outside the job's 2 node"):
        rendezvous({**pet, "PET_NODE_RANK": "3"}, 2)
    _, plan = plan_without_data(load_job(None, ["cluster.device=cpu", "cluster.nodes=2", "train.micro_batch_size=4"]),
                                "cpu", here=False, absolute=False)
    from pathlib import Path

    head = torchrun_argv(plan, Path("/w/runs/r"), 0, 2, "j-node-0-0.j", 29500, "j-node-0-0.j")
    other = torchrun_argv(plan, Path("/w/runs/r"), 1, 2, "j-node-0-0.j", 29500, "j-node-0-1.j")
    assert "--rdzv-conf" in head and "is_host=1" in head and "--rdzv-conf" not in other
    for argv, addr in ((head, "j-node-0-0.j"), (other, "j-node-0-1.j")):
        assert argv[argv.index("--rdzv-endpoint") + 1] == "j-node-0-0.j:29500"
        assert argv[argv.index("--local-addr") + 1] == addr and argv[argv.index("--nnodes") + 1] == "2"
    _, one = plan_without_data(load_job(None, ["cluster.device=cpu"]), "cpu", here=False, absolute=False)
    assert "--standalone" in torchrun_argv(one, Path("/w/runs/r"), 0, 1, None, 29500, None)
