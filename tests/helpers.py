"""Shared test helpers: small things built locally, never fetched from the hub."""
from __future__ import annotations

import hashlib
import json
import os
import string
from pathlib import Path

import pytest

# A chat template in the ChatML style with {% generation %} markers around what the assistant
# says (its closing <|im_end|> included, so that the model learns to stop).
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% if message['role'] == 'assistant' %}"
    "<|im_start|>assistant\n"
    "{% generation %}{{ message['content'] }}<|im_end|>{% endgeneration %}\n"
    "{% else %}"
    "<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

SPECIAL_TOKENS = ["<pad>", "<unk>", "<s>", "</s>", "<|im_start|>", "<|im_end|>"]


def make_char_tokenizer(dir: str | os.PathLike | None = None, chat_template: str | None = CHAT_TEMPLATE):
    """A character-level ``PreTrainedTokenizerFast``: one token per printable ASCII character.

    Ids: <pad>=0, <unk>=1, <s>=2 (bos), </s>=3 (eos), <|im_start|>=4, <|im_end|>=5, then the
    characters. With ``dir`` the tokenizer is also saved there (``from_pretrained(dir)`` loads it).
    ``chat_template=None`` gives a tokenizer without a chat template.
    """
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    chars = sorted(set(string.printable))
    vocab = {t: i for i, t in enumerate(SPECIAL_TOKENS)}
    for ch in chars:
        vocab.setdefault(ch, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    tok.decoder = decoders.Fuse()
    tok.add_special_tokens(SPECIAL_TOKENS)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
        additional_special_tokens=["<|im_start|>", "<|im_end|>"],
    )
    if chat_template is not None:
        fast.chat_template = chat_template
    if dir is not None:
        Path(dir).mkdir(parents=True, exist_ok=True)
        fast.save_pretrained(str(dir))
    return fast


GOLDEN = Path(__file__).resolve().parent / "golden"


def check_golden(name: str, text: str) -> None:
    """``text`` must equal tests/golden/NAME. After an intended change, regenerate every golden
    file with ``UPDATE_GOLDEN=1 python -m pytest tests/unit -q`` and review the diff."""
    path = GOLDEN / name
    if os.environ.get("UPDATE_GOLDEN") == "1":
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    assert path.exists(), f"{path} missing: run with UPDATE_GOLDEN=1"
    assert text == path.read_text(), f"{name} drifted from its golden file (UPDATE_GOLDEN=1 to accept)"


# ---------------------------------------------------------------- a Hugging Face cache in the Hub's layout

HUB_COMMIT = "a" * 40


def put_repo(cache: Path, repo_id: str, repo_type: str, files: dict[str, bytes], commit: str = HUB_COMMIT,
             ref: str | None = "main") -> Path:
    """One revision of a repository in the Hub cache's layout: content-addressed blobs, snapshot
    files linking to them, refs/<ref> holding the commit. The snapshot folder."""
    repo = cache / f"{repo_type}s--{repo_id.replace('/', '--')}"
    snap = repo / "snapshots" / commit
    for rel, data in files.items():
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        link = snap / rel
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    if ref:
        (repo / "refs").mkdir(parents=True, exist_ok=True)
        (repo / "refs" / ref).write_text(commit)
    return snap


def folder_files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def parquet_bytes(rows: list[dict]) -> bytes:
    import io

    import pyarrow as pa
    import pyarrow.parquet as pq

    buf = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows), buf)
    return buf.getvalue()


def demo_hub_cache(root: Path, model_id: str, data_id: str) -> dict[str, str]:
    """An offline environment (HF_HUB_OFFLINE=1) whose Hugging Face cache, root/hub, holds the
    demo's tiny model and tokenizer as ``model_id`` and 600 arithmetic rows as ``data_id``
    (parquet: 500 train, 100 test), both at HUB_COMMIT on main."""
    from launcher.demo import ensure_demo_assets

    cache = root / "hub"
    assets = ensure_demo_assets()
    put_repo(cache, model_id, "model", {**folder_files(assets.model_dir), **folder_files(assets.tokenizer_dir)})
    rows = [json.loads(line) for line in assets.data_file.read_text().splitlines()[:600]]
    put_repo(cache, data_id, "dataset", {
        "README.md": b"---\nlicense: mit\n---\n# arithmetic\n",
        "data/train-00000-of-00001.parquet": parquet_bytes(rows[:500]),
        "data/test-00000-of-00001.parquet": parquet_bytes(rows[500:]),
    })
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    env.update(HF_HOME=str(root / "home"), HF_HUB_CACHE=str(cache), HF_DATASETS_CACHE=str(root / "datasets"),
               HF_HUB_OFFLINE="1")
    return env


def missing_prerequisite(reason: str) -> None:
    """A test whose prerequisite (root, network namespaces, Slurm, Chromium, a tmpfs) is missing:
    skipped on a developer's machine, failed with the reason under CI (CI set), where every test
    must run."""
    if os.environ.get("CI"):
        pytest.fail(f"{reason}; CI must run this test (CI={os.environ['CI']})", pytrace=False)
    pytest.skip(reason)


def ensure_libaio() -> None:
    """DeepSpeed's async I/O op (NVMe offload) builds against libaio: install Debian's libaio-dev
    when it is missing (as root, like tests/slurm/setup.sh installs Slurm), else a missing prerequisite."""
    import shutil
    import subprocess

    from launcher.prepare import async_io_buildable

    if async_io_buildable():
        return
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        missing_prerequisite("NVMe offload needs libaio-dev, and this is not root on Debian to install it")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "-q", "libaio-dev"]
    if subprocess.run(install, capture_output=True, env=env).returncode != 0:
        subprocess.run(["apt-get", "update", "-q"], capture_output=True, env=env)
        subprocess.run(install, capture_output=True, env=env)
    if not async_io_buildable():
        missing_prerequisite("apt-get could not install libaio-dev: DeepSpeed's async I/O op cannot be built")


def rank_pids(run_dir: str | os.PathLike) -> dict[int, int]:
    """The live ranks of a run, global rank -> pid: processes of `launcher train RUN_DIR`. A rank
    that torchrun started has RANK=<rank> in its environment; one that launcher.forkrun forked
    has the agent's command line and environment, and is named rank<R> (/proc/PID/comm). Neither
    agent (torchrun, launcher.forkrun) is a rank."""
    import re

    out: dict[int, int] = {}
    for p in Path("/proc").iterdir():
        if not p.name.isdigit():
            continue
        try:
            cmd = (p / "cmdline").read_bytes().split(b"\0")
            if b"train" not in cmd or str(run_dir).encode() not in cmd \
                    or any(b"torch.distributed.run" in c for c in cmd):
                continue
            if any(b"launcher.forkrun" in c for c in cmd):
                m = re.fullmatch(rb"rank(\d+)", (p / "comm").read_bytes().strip())
            else:
                m = re.search(rb"(?:^|\0)RANK=(\d+)(?:\0|$)", (p / "environ").read_bytes())
        except OSError:
            continue
        if m:
            out[int(m.group(1))] = int(p.name)
    return out


def rank_pid(run_dir: str | os.PathLike, rank: int) -> int | None:
    """The pid of global rank ``rank`` of a run, or None while it has not started."""
    return rank_pids(run_dir).get(rank)


def fake_distribution(root: Path, name: str, version: str) -> Path:
    """A folder whose only content is a distribution's metadata: first on a node's PYTHONPATH,
    ``importlib.metadata.version(name)`` answers ``version`` there, as on a node where another
    version was installed."""
    info = root / f"{name}-{version}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    return root


def launcher_ok(cwd, *args: str, timeout: float = 600):
    """``python -m launcher ARGS`` in ``cwd``, which must succeed (its output's tail otherwise)."""
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "launcher", *args], capture_output=True, text=True, cwd=cwd,
                         timeout=timeout)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return out
