"""`launcher k8s-node RUN_DIR`: what each pod of a Kubernetes run executes (launcher.execute.k8s_node)."""
from __future__ import annotations

import sys

import click


@click.command(name="k8s-node")
@click.argument("run_dir", type=click.Path(file_okay=False))
def k8s_node(run_dir):
    """Run this pod's node of RUN_DIR (on the shared claim): the run directory from the ConfigMap,
    the rendezvous from the controller's environment, torchrun; SIGTERM checkpoints and stops."""
    from launcher.execute.k8s_node import main

    sys.exit(main(run_dir))
