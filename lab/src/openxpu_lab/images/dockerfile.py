"""The Dockerfile subset the lab interprets: FROM, RUN, COPY, ENV, ARG, WORKDIR, USER,
ENTRYPOINT, CMD, LABEL (EXPOSE is accepted and ignored). Anything else is an error, so a
Dockerfile that works here also works with `docker build`."""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass
from pathlib import Path

from openxpu_lab.shell import LabError

SUPPORTED = {
    "FROM",
    "RUN",
    "COPY",
    "ENV",
    "ARG",
    "WORKDIR",
    "USER",
    "ENTRYPOINT",
    "CMD",
    "LABEL",
    "EXPOSE",
}


@dataclass(frozen=True)
class Instruction:
    op: str
    args: str
    line: int


def parse(path: Path) -> list[Instruction]:
    out: list[Instruction] = []
    buf = ""
    start = 0
    for n, raw in enumerate(path.read_text().splitlines(), 1):
        stripped = raw.strip()
        if not buf and (not stripped or stripped.startswith("#")):
            continue
        if buf and stripped.startswith("#"):
            continue  # comment lines inside a continuation are dropped, as docker does
        if not buf:
            start = n
        if stripped.endswith("\\"):
            buf += stripped[:-1] + " "
            continue
        buf += stripped
        op, _, args = buf.partition(" ")
        op = op.upper()
        if op not in SUPPORTED:
            raise LabError(f"{path}:{start}: instruction {op} is not supported by the lab builder")
        out.append(Instruction(op, args.strip(), start))
        buf = ""
    if buf:
        raise LabError(f"{path}: file ends inside a line continuation")
    return out


_VAR = re.compile(r"\$(?:\{(\w+)(?::-([^}]*))?\}|(\w+))")


def expand(text: str, env: dict[str, str]) -> str:
    def sub(m: re.Match[str]) -> str:
        name = m.group(1) or m.group(3)
        default = m.group(2)
        return env.get(name, default if default is not None else "")

    return _VAR.sub(sub, text)


def exec_or_shell(args: str) -> list[str]:
    """JSON (exec) form as is; shell form wrapped in /bin/sh -c, like docker."""
    if args.startswith("["):
        try:
            value = json.loads(args)
        except ValueError as exc:
            raise LabError(f"bad JSON form: {args}") from exc
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise LabError(f"bad JSON form: {args}")
        return [str(v) for v in value]
    return ["/bin/sh", "-c", args]


def key_values(args: str) -> dict[str, str]:
    """`ENV a=1 b="x y"` or legacy `ENV a 1`."""
    parts = shlex.split(args)
    if parts and "=" not in parts[0]:
        return {parts[0]: " ".join(parts[1:])}
    kv: dict[str, str] = {}
    for p in parts:
        k, sep, v = p.partition("=")
        if not sep:
            raise LabError(f"expected KEY=VALUE, got {p!r}")
        kv[k] = v
    return kv
