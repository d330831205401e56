"""The report of real runs: `launcher run` on 2 CPU ranks (gloo, the embedded tiny model), then
every figure of the report recomputed here from first principles.

* counts: tokens and samples re-derived from the prepared data and the BatchSchedule;
* FLOPs: the parameter count of the saved model and 6N + 12 L h s written out by hand; MFU
  against a known peak (the start record rewritten to an H100, bf16);
* energy: one emissions/<node>.json per node, and the report equals it;
* HTML: rendered by headless Chromium (Debian's package, installed when missing and root),
  offline, with inlined PNG plots, and a screenshot that is not blank;
* comparison: `launcher report A B` as md, html and csv.

SAVE_DOCS=1 also runs `test_docs_example`, which writes docs/report-example.md and
docs/report-html.png from a full default run (`launcher run`, no overrides: a few minutes;
DOCS_RUN_DIR=<run dir> reuses a finished one). Without it nothing is written into the repo.
"""
from __future__ import annotations

import base64
import csv
import io
import json
import os
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest
from tests.helpers import missing_prerequisite

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
DOCS = REPO / "docs"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
H100_SXM_BF16_TFLOPS = 989.4  # NVIDIA H100 datasheet, SXM, dense bf16 (1,979 with sparsity, halved)

BASE = ["data.num_samples=400", "train.eval_accuracy_samples=0", "train.global_batch_size=8",
        "train.micro_batch_size=2", "cluster.device=cpu"]
COMMON = [*BASE, "train.max_steps=6", "train.eval_every_steps=3"]
RUNS = {"zero2": [], "fsdp": ["parallel.strategy=fsdp"]}  # ZeRO-2 is the demo's default


def launcher(*args: str, cwd: Path | None = None, timeout: int = 600, env: dict | None = None) -> subprocess.CompletedProcess:
    out = subprocess.run([sys.executable, "-m", "launcher", *args], capture_output=True, text=True,
                         timeout=timeout, cwd=cwd, env=env)
    assert out.returncode == 0, f"launcher {' '.join(args)}:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    return out


def launcher_run(run_dir: Path, *overrides: str, env: dict | None = None) -> Path:
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    launcher("run", "--run-dir", str(run_dir), *overrides, cwd=run_dir.parent, env=env)
    assert (run_dir / "COMPLETED").exists()
    return run_dir


def records(run_dir: Path, kind: str) -> list[dict]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["kind"] == kind]


def report_json(run_dir: Path) -> dict:
    return json.loads((run_dir / "report.json").read_text())


@pytest.fixture(scope="module")
def runs(tmp_path_factory, launcher_cache) -> dict[str, Path]:
    """Run A (ZeRO-2, the default) and run B (FSDP2): six steps each, same data and batch, in that
    order, with a calibration history of their own (empty before A; the session's probe of this
    machine and the demo's assets copied in)."""
    root = tmp_path_factory.mktemp("report")
    cache = root / "cache"
    shutil.copytree(launcher_cache, cache, ignore=shutil.ignore_patterns("calibration.jsonl"))
    env = {**os.environ, "LAUNCHER_CACHE": str(cache)}
    out = {name: launcher_run(root / name, *COMMON, *extra, env=env) for name, extra in RUNS.items()}
    out["env"] = env
    return out


@pytest.fixture(scope="module")
def epoch_run(tmp_path_factory) -> Path:
    """One full epoch (no train.max_steps) of the same small data set."""
    root = tmp_path_factory.mktemp("report-epoch")
    return launcher_run(root / "epoch", *BASE, "train.epochs=1", "train.eval_every_steps=1000")


# --------------------------------------------------------------------------- 1. counts


def recount(run_dir: Path) -> dict:
    """Tokens and samples of every scheduled step, from the prepared data (not from the metrics)."""
    from launcher.sources import job_paths
    from launcher.spec import JobSpec
    from launcher.train.data import BatchSchedule, prepare_data

    plan = json.loads((run_dir / "plan.json").read_text())
    spec = JobSpec.model_validate(plan["job"])
    paths = job_paths(spec)
    prepared = prepare_data(spec, paths.tokenizer, paths.data, run_dir / "cache")
    assert prepared.cache_hit, "the run's own tokenized cache must be found again"
    sched = BatchSchedule(len(prepared.train), plan["world_size"], plan["micro_batch_size"],
                          plan["grad_accum_steps"], spec.train.epochs, spec.train.seed)
    total_steps = sched.total_steps(spec.train.max_steps)
    tokens = samples = padding = 0
    used: list[int] = []
    for step in range(total_steps):
        rows = sched.global_rows(step)
        assert len(rows) == sched.global_batch
        used += rows
        for i in rows:
            # prepared rows hold real tokens only: padding is added by collate
            tokens += len(prepared.train[i]["input_ids"])
            samples += prepared.train[i]["n_docs"]
        # padding: each micro-batch of each rank is right-padded to its longest row
        for micro in range(sched.grad_accum_steps):
            for rank in range(sched.world_size):
                lens = [len(prepared.train[i]["input_ids"]) for i in sched.rows_for(step, micro, rank)]
                padding += max(lens) * len(lens) - sum(lens)
    return {"plan": plan, "spec": spec, "prepared": prepared, "sched": sched, "total_steps": total_steps,
            "tokens": tokens, "samples": samples, "padding": padding, "used": used}


def test_a_run_forecasts_itself_and_calibrates_the_next_plan(runs):
    """No history: run A's report holds its CPU forecast (this machine's probe) against what it
    measured. A completed run joins the history: run B (FSDP2) is forecast from A (another
    strategy: distance 1.5), and the next plan of A's job from A itself (distance 0)."""
    a, b = report_json(runs["zero2"])["forecast"], report_json(runs["fsdp"])["forecast"]
    assert a["calibrated_from"] is None and a["missing"] == []
    for row in ("time_s", "kwh", "kg_co2e", "peak_memory_bytes"):
        assert a["rows"][row]["forecast"] > 0 and a["rows"][row]["ratio"] > 0, row
    assert (b["calibrated_from"], b["calibration_source"], b["calibration_distance"]) == (
        str(runs["zero2"]), "history", 1.5)
    plan = json.loads(launcher("plan", *COMMON, "--json", env=runs["env"]).stdout)["forecast"]
    assert {k: plan["calibration"][k] for k in ("run_dir", "distance", "source")} == {
        "run_dir": str(runs["zero2"]), "distance": 0.0, "source": "history"}
    text = " ".join(launcher("plan", *COMMON, env=runs["env"]).stdout.split())
    assert f"scaled from {runs['zero2']}: the nearest run of the calibration history, distance 0.00" in text


@pytest.mark.parametrize("name", list(RUNS))
def test_counts_are_exact(runs, name):
    d = runs[name]
    c = recount(d)
    rep = report_json(d)
    thr = rep["throughput"]
    assert c["total_steps"] == c["plan"]["total_steps"] == 6
    assert thr["steps"] == thr["last_step"] == c["plan"]["total_steps"]
    assert rep["job"]["planned_steps"] == c["plan"]["total_steps"]
    assert thr["tokens"] == c["tokens"]
    assert thr["samples"] == c["samples"]
    assert thr["tokens"] == sum(r["tokens"] for r in records(d, "train"))
    assert rep["status"] == "completed" and rep["complete"] is True
    # packed rows are max_seq_len long except the last one, which collate pads when it is drawn
    assert thr["padding_tokens"] == c["padding"]


def test_full_epoch_counts_every_row_once_less_the_dropped_partial_batch(epoch_run):
    c = recount(epoch_run)
    sched, train = c["sched"], c["prepared"].train
    rep = report_json(epoch_run)
    n_rows, gb = len(train), sched.global_batch
    assert c["spec"].train.max_steps is None and c["spec"].train.epochs == 1
    assert c["total_steps"] == c["plan"]["total_steps"] == n_rows // gb == rep["throughput"]["steps"]
    # The last partial global batch of each epoch is dropped (BatchSchedule: steps_per_epoch =
    # n_rows // global_batch), so n_rows % global_batch rows of the permutation are not trained.
    used = c["used"]
    assert len(used) == len(set(used)), "a row was used twice within one epoch"
    dropped = sorted(set(range(n_rows)) - set(used))
    assert len(dropped) == n_rows % gb
    all_tokens = sum(len(r["input_ids"]) for r in train)
    dropped_tokens = sum(len(train[i]["input_ids"]) for i in dropped)
    start = records(epoch_run, "start")[0]
    assert start["train_tokens"] == all_tokens and start["train_rows"] == n_rows
    assert rep["throughput"]["tokens"] == c["tokens"] == all_tokens - dropped_tokens
    assert rep["throughput"]["samples"] == c["samples"]
    assert rep["throughput"]["samples"] == sum(r["n_docs"] for r in train) - sum(train[i]["n_docs"] for i in dropped)


# --------------------------------------------------------------------------- 2. FLOPs and MFU


def test_flops_per_token_by_hand(runs):
    import torch
    from transformers import AutoModelForCausalLM

    d = runs["zero2"]
    start = records(d, "start")[0]
    model = AutoModelForCausalLM.from_pretrained(str(d / "final"), dtype=torch.float32)
    n_params = sum(p.numel() for p in model.parameters())
    assert start["n_params"] == n_params == start["n_trainable_params"]  # full fine-tuning

    cfg = json.loads((d / "final" / "config.json").read_text())
    V, h, L = cfg["vocab_size"], cfg["hidden_size"], cfg["num_hidden_layers"]
    heads, kv_heads, head_dim, ffn = (cfg["num_attention_heads"], cfg["num_key_value_heads"],
                                      cfg["head_dim"], cfg["intermediate_size"])
    assert not cfg["tie_word_embeddings"]
    # Llama parameters, written out: embedding + L x (q, k, v, o, gate/up/down, 2 RMSNorms) + norm + lm_head
    per_layer = (h * heads * head_dim + 2 * h * kv_heads * head_dim + heads * head_dim * h
                 + 3 * h * ffn + 2 * h)
    assert n_params == V * h + L * per_layer + h + V * h
    s = json.loads((d / "plan.json").read_text())["seq_len"]
    assert s == start["seq_len"] == 128
    N = n_params - V * h  # the input embedding is a gather, not a matmul (untied: lm_head stays)
    flops = 6 * N + 12 * L * h * s
    # the demo model: V=101, h=128, L=2, s=128 -> N = 308,480 -> 6N = 1,850,880, 12Lhs = 393,216
    assert (V, h, L, N) == (101, 128, 2, 308_480)
    assert flops == 2_244_096
    assert start["flops_per_token"] == flops
    assert report_json(d)["mfu"]["flops_per_token"] == flops


def test_mfu_against_a_known_peak(runs, tmp_path):
    src = runs["zero2"]
    rep_cpu = report_json(src)
    cpu = rep_cpu["mfu"]
    # no datasheet peak for a CPU: the matrix rate this machine's probe measured (plan.json), said so
    probe = json.loads((src / "plan.json").read_text())["forecast"]["cpu"]
    assert cpu["peak_tflops"] == pytest.approx(probe["matmul_gflops"] / 1000) and "measured" in cpu["accelerator_source"]
    assert cpu["value"] == pytest.approx(rep_cpu["throughput"]["tokens_per_s_per_device"] * cpu["flops_per_token"]
                                         / (probe["matmul_gflops"] * 1e9))

    d = tmp_path / "as-h100"
    shutil.copytree(src, d, ignore=shutil.ignore_patterns("final", "checkpoints", "cache", "logs"))
    lines = []
    for line in (d / "metrics.jsonl").read_text().splitlines():
        r = json.loads(line)
        if r["kind"] == "start":
            r.update(device="cuda", accelerator="NVIDIA H100 80GB HBM3", dtype="bf16")
        lines.append(json.dumps(r))
    (d / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    rep = json.loads(launcher("report", str(d), "--format", "json", "--no-write").stdout)

    recs = [json.loads(x) for x in lines]
    start = next(r for r in recs if r["kind"] == "start")
    train = [r for r in recs if r["kind"] == "train"]
    world = start["world_size"]
    fpt = start["flops_per_token"]
    peak = H100_SXM_BF16_TFLOPS * 1e12
    tokens = sum(r["tokens"] for r in train)
    step_s = sum(r["step_time_s"] for r in train)
    mfu = tokens / step_s / world * fpt / peak
    wall = max(r["time"] for r in recs) - (start["time"] - start["setup_s"])
    mfu_wall = tokens / wall / world * fpt / peak

    m = rep["mfu"]
    assert m["accelerator"] == "NVIDIA H100 SXM" and m["peak_tflops"] == H100_SXM_BF16_TFLOPS
    assert m["dtype"] == "bf16"
    assert m["value"] == pytest.approx(mfu, rel=1e-12)
    assert m["mfu_wall"] == pytest.approx(mfu_wall, rel=1e-12)
    assert m["achieved_tflops_per_device"] == pytest.approx(tokens / step_s / world * fpt / 1e12, rel=1e-12)
    assert rep["throughput"]["device_hours_label"] == "GPU-hours"
    assert 0 < m["value"] < 1e-3  # a CPU's throughput against an H100's peak


# --------------------------------------------------------------------------- 3. energy


@pytest.mark.parametrize("name", list(RUNS))
def test_one_energy_file_per_node_and_report_equals_it(runs, name):
    d = runs[name]
    files = sorted((d / "emissions").glob("*.json"))
    assert len(files) == 1, f"one node, two ranks: one tracker, got {[p.name for p in files]}"
    assert len(list((d / "emissions").glob("*.csv"))) == 1
    node = json.loads(files[0].read_text())
    assert node["final"] is True and node["energy_kwh"]["total"] > 0
    e = report_json(d)["energy"]
    assert e["available"] and e["nodes"] == 1 and e["node_names"] == [files[0].stem]
    assert e["energy_kwh"] == pytest.approx(node["energy_kwh"], rel=1e-12)
    assert e["emissions_kg"] == pytest.approx(node["emissions_kg"], rel=1e-12)
    assert e["pue"] == node["pue"] == 1.2
    tokens = report_json(d)["throughput"]["tokens"]
    assert e["energy_per_token_j"] == pytest.approx(node["energy_kwh"]["total"] * 3.6e6 / tokens, rel=1e-12)


# --------------------------------------------------------------------------- 4. HTML in Chromium


class _Page(HTMLParser):
    """Tags, their attributes and the text of a page."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict]] = []
        self.text: list[str] = []
        self._stack: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, {k: v or "" for k, v in attrs}))
        self._stack.append(tag)

    def handle_endtag(self, tag):
        if tag in self._stack:
            while self._stack.pop() != tag:
                pass

    def handle_data(self, data):
        self.text.append((self._stack[-1] if self._stack else "", data))


def parse(html: str) -> _Page:
    p = _Page()
    p.feed(html)
    return p


def texts_of(page: _Page, tag: str) -> list[str]:
    return [t.strip() for k, t in page.text if k == tag and t.strip()]


def check_offline_page(html: str, min_plots: int = 2) -> _Page:
    """Self-contained: >= min_plots inlined PNGs that decode, no http(s) resource or link."""
    page = parse(html)
    imgs = [a for t, a in page.tags if t == "img"]
    pngs = [a["src"] for a in imgs if a.get("src", "").startswith("data:image/png;base64,")]
    assert len(pngs) >= min_plots, f"{len(pngs)} inlined PNG plots"
    assert len(pngs) == len(imgs), "every image is inlined"
    from PIL import Image

    for src in pngs:
        raw = base64.b64decode(src.split(",", 1)[1], validate=True)
        assert raw.startswith(PNG_MAGIC)
        with Image.open(io.BytesIO(raw)) as im:
            im.verify()
        with Image.open(io.BytesIO(raw)) as im:
            assert im.size[0] >= 300 and im.size[1] >= 150, im.size
    for tag, attrs in page.tags:
        for key in ("src", "href", "srcset", "action", "data"):
            v = attrs.get(key, "").strip().lower()
            assert not v.startswith(("http:", "https:", "//", "ftp:")), f"<{tag} {key}={v[:60]}>"
        assert not (tag == "link" and "stylesheet" in attrs.get("rel", "")), "external stylesheet"
        assert not (tag == "script" and attrs.get("src")), "external script"
    low = html.lower()
    assert "url(http" not in low and "@import" not in low
    return page


@pytest.fixture(scope="module")
def chromium() -> str:
    """Debian's chromium; apt-installed when missing (needs root, else skip)."""
    found = shutil.which("chromium") or ("/usr/bin/chromium" if os.path.exists("/usr/bin/chromium") else None)
    if found:
        return found
    if os.geteuid() != 0:
        missing_prerequisite("chromium missing and not root: cannot apt-get install it")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in (["apt-get", "update"], ["apt-get", "install", "-y", "--no-install-recommends", "chromium"]):
        out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=1200)
        assert out.returncode == 0, f"{' '.join(cmd)} failed:\n{(out.stdout + out.stderr)[-3000:]}"
    found = shutil.which("chromium")
    assert found, "apt-get installed chromium but there is no chromium on PATH"
    return found


def chrome(browser: str, tmp: Path, url: str, *args: str) -> subprocess.CompletedProcess:
    profile = Path(tmp) / f"profile-{len(list(Path(tmp).glob('profile-*')))}"
    cmd = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           "--disable-dev-shm-usage", "--hide-scrollbars", "--mute-audio",
           # nothing resolves: the page must render from the file alone
           "--host-resolver-rules=MAP * ~NOTFOUND", f"--user-data-dir={profile}", *args, url]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, f"chromium failed ({out.returncode}):\n{out.stderr[-3000:]}"
    return out


SHOT_HEIGHT = 3000  # the whole comparison page
RUN_SHOT_HEIGHT = 3600  # the whole single-run page: its tables, the forecast and the plots


def screenshot(browser: str, tmp: Path, html_file: Path, png: Path, height: int = SHOT_HEIGHT) -> Path:
    chrome(browser, tmp, html_file.resolve().as_uri(), f"--screenshot={png}", f"--window-size=1280,{height}")
    assert png.is_file() and png.read_bytes().startswith(PNG_MAGIC)
    return png


def check_screenshot(png: Path, min_plots_px: int = 2000, height: int = SHOT_HEIGHT) -> None:
    """Not blank: > 3% of the pixels not white; plots drawn: many strongly blue pixels
    (matplotlib's first colour #1f77b4 and the energy bars; the tables are grey and black)."""
    import numpy as np
    from PIL import Image

    with Image.open(png) as im:
        assert im.size == (1280, height), im.size
        a = np.asarray(im.convert("RGB")).astype(int)
    non_white = (a.min(axis=2) < 235).mean()
    assert non_white > 0.03, f"screenshot looks blank: {non_white:.1%} non-white pixels"
    r, b = a[..., 0], a[..., 2]
    blue = int(((b - r > 80) & (b > 120)).sum())
    assert blue > min_plots_px, f"plots not visible: {blue} blue pixels"


def test_html_report_renders_offline_in_chromium(runs, chromium, tmp_path):
    d = runs["zero2"]
    html_file = d / "report.html"
    rep = report_json(d)
    source = html_file.read_text()
    check_offline_page(source)

    dom = chrome(chromium, tmp_path, html_file.resolve().as_uri(), "--dump-dom").stdout
    page = check_offline_page(dom)
    title = f"Report: demo ({d.name})"
    assert texts_of(page, "title") == [title]
    assert texts_of(page, "h1") == [title]
    h2 = texts_of(page, "h2")
    for section in ("Job", "Throughput", "MFU", "Energy and emissions", "Cost", "Loss", "Plots"):
        assert section in h2, (section, h2)
    body = " ".join(t for _, t in page.text)
    assert "completed" in body and "DeepSpeed ZeRO-2" in body
    assert f"{rep['throughput']['tokens']:,}" in body, "the token count is on the page"
    captions = texts_of(page, "figcaption")
    assert any(c.startswith("Loss") for c in captions) and any(c.startswith("Throughput") for c in captions)

    png = screenshot(chromium, tmp_path, html_file, tmp_path / "report.png", RUN_SHOT_HEIGHT)
    check_screenshot(png, height=RUN_SHOT_HEIGHT)


# --------------------------------------------------------------------------- 5. comparison


def test_compare_two_runs(runs, chromium, tmp_path):
    a, b = runs["zero2"], runs["fsdp"]
    md = launcher("report", str(a), str(b), "--format", "md").stdout
    assert md.startswith("# Comparison of 2 runs")
    table = [line for line in md.splitlines() if line.startswith("| ")]
    header = [c.strip() for c in table[0].strip("|").split("|")]
    rows = {r[0]: dict(zip(header, r)) for r in ([c.strip() for c in line.strip("|").split("|")]
                                                  for line in table[1:])}
    assert set(rows) == {"zero2", "fsdp"}
    assert rows["zero2"]["Strategy"] == "ZeRO" and rows["zero2"]["ZeRO stage"] == "2"
    assert rows["fsdp"]["Strategy"] == "FSDP2" and rows["fsdp"]["ZeRO stage"] == "-"
    assert rows["zero2"]["World"] == rows["fsdp"]["World"] == "2"
    assert "**zero2**: completed" in md and "**fsdp**: completed" in md

    out = tmp_path / "cmp.html"
    launcher("report", str(a), str(b), "--format", "html", "--output", str(out))
    page = check_offline_page(out.read_text(), min_plots=2)
    assert texts_of(page, "h1") == ["Comparison of 2 runs"]
    cells = texts_of(page, "td")
    assert "zero2" in cells and "fsdp" in cells and "ZeRO" in cells and "FSDP2" in cells
    captions = texts_of(page, "figcaption")
    assert "Loss (train, eval) vs step" in captions
    assert any(c.startswith("Energy by component and run") for c in captions)
    check_screenshot(screenshot(chromium, tmp_path, out, tmp_path / "cmp.png"))

    text = launcher("report", str(a), str(b), "--format", "csv").stdout
    got = list(csv.DictReader(io.StringIO(text)))
    assert len(text.strip().splitlines()) == 3 and len(got) == 2
    from launcher.report.render import CSV_FIELDS

    assert list(got[0]) == [n for n, _ in CSV_FIELDS]
    assert [r["strategy"] for r in got] == ["zero", "fsdp"]
    assert [r["zero_stage"] for r in got] == ["2", ""]
    for r, d in zip(got, (a, b)):
        assert int(r["tokens"]) == report_json(d)["throughput"]["tokens"]
        assert float(r["energy_kwh"]) == pytest.approx(report_json(d)["energy"]["energy_kwh"]["total"], rel=1e-12)


# --------------------------------------------------------------------------- docs (opt-in)


@pytest.mark.skipif(os.environ.get("SAVE_DOCS") != "1", reason="SAVE_DOCS=1 writes docs/report-*")
def test_docs_example(chromium, tmp_path_factory):
    """docs/report-example.md and docs/report-html.png from a full default run (the README's first
    command, `launcher run`); DOCS_RUN_DIR=<finished run dir> reuses one."""
    if os.environ.get("DOCS_RUN_DIR"):
        d = Path(os.environ["DOCS_RUN_DIR"]).resolve()
    else:
        root = tmp_path_factory.mktemp("docs")
        launcher("run", cwd=root, timeout=1800)
        made = sorted((root / "runs").glob("demo-*"))
        assert len(made) == 1, made
        d = made[0]
    assert (d / "COMPLETED").exists()
    md = launcher("report", str(d), "--format", "md").stdout
    assert md.startswith("# Report: demo")
    tmp = tmp_path_factory.mktemp("docs-shot")
    check_offline_page((d / "report.html").read_text())
    png = screenshot(chromium, tmp, d / "report.html", tmp / "report-html.png", RUN_SHOT_HEIGHT)
    check_screenshot(png, height=RUN_SHOT_HEIGHT)
    DOCS.mkdir(exist_ok=True)
    (DOCS / "report-example.md").write_text(md)
    import numpy as np
    from PIL import Image

    with Image.open(png) as im:  # the README's copy: the page without the white below it
        rgb = im.convert("RGB")
    rows = np.nonzero((np.asarray(rgb).min(axis=2) < 250).any(axis=1))[0]
    rgb.crop((0, 0, rgb.width, min(rgb.height, int(rows[-1]) + 40))).save(DOCS / "report-html.png", optimize=True)
