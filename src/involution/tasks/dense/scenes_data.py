"""Where a run's generated scene set lives, and making it (once, by the first process) when it is not there yet."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from ..engine.distributed import DistInfo, all_gather_objects
from ..scenes import make_scenes
from .config import DenseConfig

SCENES_ROOT = Path("runs") / "scenes"


def default_scenes_dir(config: DenseConfig) -> Path:
    """``runs/scenes/<source>-<size>px-<train>-<val>``: runs with the same scene settings share one set."""
    return SCENES_ROOT / f"{config.scene_source}-{config.image_size}px-{config.num_train}-{config.num_val}"


def scenes_root(config: DenseConfig, log: Callable[[str], None] = print) -> Path:
    """The scene set of ``config``, generated if needed (by rank 0 under torchrun; the others wait for it)."""
    root = Path(config.scenes_dir) if config.scenes_dir else default_scenes_dir(config)
    info = _current()
    if info.is_main:
        if not (root / "done").is_file():
            log(f"generating {config.num_train} + {config.num_val} {config.scene_source} scenes "
                f"({config.image_size}x{config.image_size}) in {root}")
        make_scenes(root, source=config.scene_source or "digits", data_dir=config.data_dir,
                    num_train=config.num_train, num_val=config.num_val, image_size=config.image_size)
    all_gather_objects(None, info)  # a barrier: every process reads the finished set
    return root


def _current() -> DistInfo:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return DistInfo(dist.get_rank(), dist.get_world_size())
    return DistInfo()
