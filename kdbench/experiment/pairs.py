"""The teacher-student pairs: one config file each under ``kdbench/conf/pair/`` (the ``pair/`` config group)."""
from __future__ import annotations

from importlib import resources

from omegaconf import OmegaConf

from kdbench.core.errors import KDBenchError
from kdbench.core.registry import Registry

CONFIG_MODULE = "kdbench.conf"


def _load_pairs() -> None:
    root = resources.files(CONFIG_MODULE) / "pair"

    def walk(node, prefix: str) -> None:
        for child in sorted(node.iterdir(), key=lambda c: c.name):
            if child.is_dir():
                walk(child, f"{prefix}{child.name}/")
            elif child.name.endswith(".yaml"):
                spec = OmegaConf.create(child.read_text())["pair"]
                name = f"{prefix}{child.name[:-5]}"
                if spec.name != name:
                    raise KDBenchError(f"pair config {name}.yaml declares name {spec.name!r}")
                PAIRS.register(name, str(spec.get("description", "")),
                               teacher=spec.teacher, student=spec.student,
                               datasets=list(spec.datasets))(name)

    walk(root, "")


PAIRS: Registry[str] = Registry("pair", loader=_load_pairs)
