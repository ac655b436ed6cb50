"""Run the pinned ansible-playbook / ansible-lint (the venv's) on ansible/, offline."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from .versions_gen import ROOT

ANSIBLE = ROOT / "ansible"
PLAYBOOKS = ("install.yml", "validate.yml", "upgrade.yml", "uninstall.yml")
BIN = Path(sys.executable).parent


def ansible_env(home: Path) -> dict[str, str]:
    """The project's ansible.cfg, and no collection but the venv's: ~/.ansible and the
    default collection paths point at an empty scratch dir (parallel-safe too)."""
    env = dict(os.environ)
    env.update(
        ANSIBLE_CONFIG=str(ANSIBLE / "ansible.cfg"),
        ANSIBLE_HOME=str(home),
        ANSIBLE_COLLECTIONS_PATH=str(home / "collections"),
        ANSIBLE_LOCAL_TEMP=str(home / "tmp"),
        ANSIBLE_NOCOLOR="1",
        ANSIBLE_FORCE_COLOR="0",
        JUNIT_OUTPUT_DIR=str(home / "junit"),
        PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}",
    )
    return env


def localhost_inventory(path: Path, **variables: object) -> Path:
    """An inventory with this machine as the control host (local connection, this Python)."""
    import yaml

    inv = {
        "openxpu_control": {
            "hosts": {
                "localhost": {
                    "ansible_connection": "local",
                    "ansible_python_interpreter": sys.executable,
                }
            },
            "vars": variables,
        }
    }
    path.write_text(yaml.safe_dump(inv))
    return path


def run(
    tool: str, *args: str, home: Path, timeout: float = 600
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / tool), *args],
        cwd=ANSIBLE,
        env=ansible_env(home),
        capture_output=True,
        text=True,
        check=False,
        timeout=timeout,
    )


def playbook(
    name: str, inventory: Path, *args: str, home: Path, timeout: float = 600
) -> subprocess.CompletedProcess[str]:
    return run("ansible-playbook", "-i", str(inventory), name, *args, home=home, timeout=timeout)
