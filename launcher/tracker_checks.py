"""Before launch: can each tracker of ``report.trackers`` start here (its package installed, the
MLflow tracking URI one it accepts, W&B's folder writable)? `launcher plan`, `run` and `slurm`
refuse in one line otherwise. Only looks: no tracker package is imported here."""
from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Optional

# what each tracker imports, and what to pip install for it
PACKAGES = {"tensorboard": (("tensorboard",), "tensorboard"),
            "mlflow": (("mlflow",), "mlflow-skinny"),
            "wandb": (("wandb",), "wandb")}
MLFLOW_STORE_PACKAGES = (("sqlalchemy", "alembic"), "sqlalchemy alembic")  # the SQLite store in the run directory


def missing_packages(names, environ=os.environ) -> list[tuple[str, str]]:
    """(tracker, what to pip install) for each of ``names`` whose packages are not installed here."""
    out = []
    for name in names:
        modules, pip = PACKAGES[name]
        if name == "mlflow" and not environ.get("MLFLOW_TRACKING_URI"):
            modules, pip = modules + MLFLOW_STORE_PACKAGES[0], f"{pip} {MLFLOW_STORE_PACKAGES[1]}"
        if any(importlib.util.find_spec(m) is None for m in modules):
            out.append((name, pip))
    return out


def _truthy(value: Optional[str]) -> bool:
    return (value or "").strip().lower() in ("1", "true", "yes")


def _writable_folder_problem(folder: Path) -> Optional[str]:
    """Why files cannot be made in ``folder`` (or in the nearest folder above it that exists)."""
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        return f"{existing} is not a folder"
    if not os.access(existing, os.W_OK | os.X_OK):
        return f"{existing} is not writable"
    return None


def mlflow_refuses_file_store() -> bool:
    """Whether the installed MLflow refuses its file store unless MLFLOW_ALLOW_FILE_STORE is true
    (MLflow 3's FileStore raises "in maintenance mode" at construction). Read from its source, not
    imported: importing MLflow takes seconds, and `launcher plan` runs on login nodes."""
    spec = importlib.util.find_spec("mlflow")
    if spec is None or not spec.submodule_search_locations:
        return False
    source = Path(next(iter(spec.submodule_search_locations))) / "store" / "tracking" / "file_store.py"
    try:
        return "MLFLOW_ALLOW_FILE_STORE" in source.read_text(errors="replace")
    except OSError:
        return False


def mlflow_uri_problem(uri: str, environ=os.environ) -> Optional[str]:
    """Why MLflow would not start on ``uri`` (MLFLOW_TRACKING_URI), in one line with the fix; None
    when it would, or when only the server can tell (http, https, databricks)."""
    from urllib.parse import unquote, urlparse

    parsed = urlparse(uri)
    scheme = parsed.scheme.lower() if len(parsed.scheme) > 1 else ""  # "C:" is a drive, not a scheme
    where = f"MLFLOW_TRACKING_URI={uri}"
    if scheme in ("", "file"):
        if mlflow_refuses_file_store() and not _truthy(environ.get("MLFLOW_ALLOW_FILE_STORE")):
            return (f"report.trackers: mlflow: {where} is MLflow's file store, which this MLflow refuses at start "
                    f"(maintenance mode); use a database, for example MLFLOW_TRACKING_URI=sqlite:///"
                    f"{Path(unquote(parsed.path or uri)).absolute()}.db, or set MLFLOW_ALLOW_FILE_STORE=true")
        problem = _writable_folder_problem(Path(unquote(parsed.path if scheme else uri)).expanduser())
        return f"report.trackers: mlflow: {where}: {problem}; point it at a writable folder" if problem else None
    if scheme == "sqlite":
        missing = [m for m in MLFLOW_STORE_PACKAGES[0] if importlib.util.find_spec(m) is None]
        if missing:
            return (f"report.trackers: mlflow: {where} needs {', '.join(missing)}, not installed here; "
                    f"pip install {MLFLOW_STORE_PACKAGES[1]}")
        path = unquote(uri.split(":///", 1)[1]) if ":///" in uri else ""
        if not path or path == ":memory:":
            return (f"report.trackers: mlflow: {where} keeps no file; give a database file, for example "
                    "sqlite:////abs/path/mlflow.db")
        folder = Path(path).expanduser().absolute().parent
        if not folder.is_dir():  # SQLite makes the file, not its folder
            return f"report.trackers: mlflow: {where}: folder {folder} does not exist; mkdir -p {folder}"
        problem = _writable_folder_problem(folder)
        return f"report.trackers: mlflow: {where}: {problem}; point it at a writable folder" if problem else None
    return None


def tracker_problems(names, environ=os.environ) -> list[str]:
    """One line per tracker of ``names`` that could not start here: its package is missing, or
    its settings (MLflow's tracking URI, W&B's folder) are refused. Checked before launch, so that
    a job does not find out after the queue wait that it runs untracked."""
    missing = missing_packages(names, environ)
    lines = []
    if missing:
        listed = ", ".join(name for name, _ in missing)
        lines.append(f"report.trackers: {listed} {'is' if len(missing) == 1 else 'are'} not installed here; "
                     f"pip install {' '.join(pip for _, pip in missing)} (all of them: pip install "
                     "'launcher[trackers]'), or leave it out of report.trackers")
    absent = {name for name, _ in missing}
    if "mlflow" in names and "mlflow" not in absent and environ.get("MLFLOW_TRACKING_URI"):
        lines.append(mlflow_uri_problem(environ["MLFLOW_TRACKING_URI"], environ) or "")
    if "wandb" in names and "wandb" not in absent and environ.get("WANDB_DIR"):
        problem = _writable_folder_problem(Path(environ["WANDB_DIR"]).expanduser())
        lines.append(f"report.trackers: wandb: WANDB_DIR={environ['WANDB_DIR']}: {problem}; point it at a "
                     "writable folder" if problem else "")
    return [ln for ln in lines if ln]
