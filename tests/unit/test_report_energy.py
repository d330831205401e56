"""The node energy tracker with the real CodeCarbon (offline, no network), and reading node files."""
from __future__ import annotations

import csv
import json
import time
from pathlib import Path

import pytest

from launcher.plan import plan_job
from launcher.report.energy import read_node_energy, sum_energy
from launcher.spec import JobSpec
from launcher.train.energy import NodeEnergyTracker
from launcher.train.energy_sidecar import NodeEnergySidecar, start_node_tracker


def _rapl_expected() -> bool:
    """RAPL counts as there only if /sys/class/powercap exists and CodeCarbon can read it."""
    if not Path("/sys/class/powercap").exists():
        return False
    from codecarbon.core.cpu import is_rapl_available

    return bool(is_rapl_available())


@pytest.mark.slow  # ~7 s: CodeCarbon hardware setup + 4 s of measuring
def test_node_tracker_with_real_codecarbon(tmp_path):
    t = NodeEnergyTracker(tmp_path, "node0-test", country_iso_code="USA", pue=1.5,
                          measure_power_secs=1, flush_every_s=1)
    assert t.start() is True
    deadline = time.time() + 3.0
    while time.time() < deadline:  # a little CPU load, mostly sleep (2 shared cores)
        sum(range(20_000))
        time.sleep(0.05)
    s = t.stop()
    csv_path = tmp_path / "emissions" / "node0-test.csv"
    json_path = tmp_path / "emissions" / "node0-test.json"
    assert csv_path.is_file() and json_path.is_file()
    on_disk = json.loads(json_path.read_text())
    assert on_disk == json.loads(json.dumps(s))
    e = on_disk["energy_kwh"]
    assert e["total"] > 0 and e["cpu"] > 0 and e["ram"] > 0
    assert e["total"] == pytest.approx(e["cpu"] + e["gpu"] + e["ram"])
    assert on_disk["emissions_kg"] > 0 and on_disk["duration_s"] >= 2.5
    assert on_disk["final"] is True and on_disk["country_iso_code"] == "USA"
    # CPU: RAPL here -> measured, otherwise CodeCarbon estimates from TDP and load
    assert on_disk["measured"]["cpu"].startswith("measured (RAPL)" if _rapl_expected() else "estimated")
    assert on_disk["measured"]["ram"].startswith("estimated")
    # PUE is applied by CodeCarbon once: our totals are its figures, not multiplied again
    rows = list(csv.DictReader(csv_path.open()))
    assert len(rows) >= 2  # periodic flushes + the final row
    assert e["total"] == pytest.approx(float(rows[-1]["energy_consumed"]))
    assert float(rows[-1]["pue"]) == 1.5 and on_disk["pue"] == 1.5 and on_disk["pue_included"] is True
    assert on_disk["it_energy_kwh"] == pytest.approx(e["total"] / 1.5)

    # a resumed attempt adds a session to the same node file; the job total is the sum
    t2 = NodeEnergyTracker(tmp_path, "node0-test", pue=1.5, measure_power_secs=1, flush_every_s=None)
    assert t2.start()
    time.sleep(1.0)
    s2 = t2.stop()
    assert len(s2["sessions"]) == 2
    assert s2["energy_kwh"]["total"] == pytest.approx(sum(x["energy_kwh"]["total"] for x in s2["sessions"]))
    assert s2["energy_kwh"]["total"] > e["total"]
    nodes = read_node_energy(tmp_path)
    assert len(nodes) == 1 and sum_energy(nodes)["energy_kwh"].total == pytest.approx(s2["energy_kwh"]["total"])


def test_tracker_failure_never_raises(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    t = NodeEnergyTracker(blocker, "n")  # emissions/ cannot be made under a file
    assert t.start() is False
    assert t.stop() is None


@pytest.mark.parametrize("device,gpus,secs", [("cpu", [], 2.0), ("cuda", [3, 5], 5.0)])
def test_start_node_tracker_follows_the_plan(tmp_path, monkeypatch, device, gpus, secs):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5,7")
    spec = JobSpec.model_validate({"cluster": {"device": device, "gpus_per_node": 2},
                                   "report": {"pue": 1.3, "country_iso_code": "FRA", "region": None}})
    blocker = tmp_path / "file"
    blocker.write_text("")
    t = start_node_tracker(blocker, plan_job(spec, device=device))  # emissions/ cannot be made: not started
    assert t is not None and not t.started
    assert (t.gpu_ids, t.measure_power_secs, t.pue, t.country_iso_code) == (gpus, secs, 1.3, "FRA")
    assert t.stop() is None


def _alive(pid: int) -> bool:
    """Running (a zombie waiting for a parent that does not reap it has ended)."""
    try:
        return "\nState:\tZ" not in Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False


@pytest.mark.slow  # ~8 s: two CodeCarbon starts in child processes
def test_sidecar_keeps_codecarbon_out_of_the_rank_and_outlives_it_only_to_flush(tmp_path):
    """The rank that starts the tracker never imports CodeCarbon; the job's signals do not stop
    the child (SIGUSR2 is Slurm's preemption warning, SIGTERM its end): told to stop, it writes
    the final figures; when its rank is killed, it flushes what it measured and exits."""
    rank = ("import os, signal, sys, time\nfrom launcher.train.energy_sidecar import NodeEnergySidecar\n"
            "t = NodeEnergySidecar(sys.argv[1], 'node0-t', measure_power_secs=1, flush_every_s=None)\n"
            "t.start_in_background()\nassert t.wait_started(60)\n"
            "for sig in (signal.SIGUSR2, signal.SIGTERM, signal.SIGINT):\n    os.kill(t._proc.pid, sig)\n"
            "time.sleep(1.5)\n"
            "print(t._proc.pid, 'codecarbon' in sys.modules, flush=True)\n"
            "if sys.argv[2] == 'stop':\n    print(t.stop()['final'], flush=True)\nelse:\n    time.sleep(600)\n")
    import signal
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", rank, str(tmp_path / "a"), "stop"], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    _, imported, final = done.stdout.split()
    assert (imported, final) == ("False", "True")
    assert json.loads((tmp_path / "a" / "emissions" / "node0-t.json").read_text())["final"] is True

    killed = subprocess.Popen([sys.executable, "-c", rank, str(tmp_path / "b"), "kill"], stdout=subprocess.PIPE,
                              text=True)
    child = int(killed.stdout.readline().split()[0])
    killed.send_signal(signal.SIGKILL)
    killed.wait(timeout=30)
    deadline = time.time() + 60
    while _alive(child) and time.time() < deadline:
        time.sleep(0.1)
    assert not _alive(child), "the tracker outlived its rank"
    (node,) = read_node_energy(tmp_path / "b")
    assert node.final is False and node.energy_kwh.total > 0


def test_node_without_json_is_rebuilt_from_csv(tmp_path):
    d = tmp_path / "emissions"
    d.mkdir()
    hdr = "timestamp,run_id,duration,emissions,cpu_energy,gpu_energy,ram_energy,energy_consumed,pue,country_iso_code\n"
    (d / "node3-x.csv").write_text(hdr + "t,a,10,0.1,0.1,0.2,0.05,0.35,1.0,DEU\n"
                                         "t,a,20,0.2,0.2,0.4,0.10,0.70,1.0,DEU\n"
                                         "t,b,5,0.05,0.05,0.1,0.025,0.175,1.0,DEU\n")
    (n,) = read_node_energy(tmp_path)
    assert n.node == "node3-x" and n.rebuilt_from_csv is True and n.final is False
    assert n.energy_kwh.total == pytest.approx(0.70 + 0.175)  # last row per session, summed
    assert n.emissions_kg == pytest.approx(0.25)
    assert n.measured.gpu.startswith("unknown")


CPU_PROBE = """
import json, subprocess, sys
spawned = []
real = subprocess.Popen.__init__
def record(self, args, *a, **k):
    if "python" in str(args[0] if isinstance(args, (list, tuple)) else args).rsplit("/", 1)[-1]:
        spawned.append(args)  # a Python interpreter (CodeCarbon's other probes: uname, file, nvidia-smi)
    real(self, args, *a, **k)
subprocess.Popen.__init__ = record
if sys.argv[1] == "launcher":
    from launcher.train.energy_sidecar import _cpu_brand_from_proc
    _cpu_brand_from_proc()
from codecarbon.core.util import detect_cpu_model
print(json.dumps({"brand": detect_cpu_model(), "spawned": len(spawned)}))
"""


@pytest.mark.parametrize("how", ["launcher", "plain"])
def test_the_energy_child_names_the_cpu_without_another_interpreter(how):
    """CodeCarbon's CPU name comes from py-cpuinfo, which starts a second Python to run CPUID
    (about 1.3 s of CPU while the ranks run); the energy child answers it from /proc/cpuinfo's
    model name, the same CPUID brand string. The plain path, in the same environment, spawns."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    proc = Path("/proc/cpuinfo")
    model = next((ln.split(":", 1)[1].strip() for ln in proc.read_text().splitlines()
                  if ln.startswith("model name")), "") if proc.exists() else ""
    if not model:
        pytest.skip("no model name in /proc/cpuinfo: py-cpuinfo runs as it would")
    out = subprocess.run([sys.executable, "-c", CPU_PROBE, how], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    seen = json.loads(out.stdout.strip().splitlines()[-1])
    assert seen["brand"] == model
    assert (seen["spawned"] == 0) == (how == "launcher"), seen
