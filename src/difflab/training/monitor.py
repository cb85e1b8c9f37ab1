"""TensorBoard beside log.csv (``--logger tensorboard``, the ``tensorboard`` extra): every named loss, the LR,
samples per second and the preview grids of a run, in ``RUN/tensorboard`` (``tensorboard --logdir RUN``)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..errors import UserError

FOLDER = "tensorboard"


class TensorBoard:
    """Writes scalars ``train/NAME`` and images ``samples`` with torch.utils.tensorboard's SummaryWriter."""

    def __init__(self, run_dir: str | Path):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise UserError("--logger tensorboard needs the tensorboard package: pip install 'difflab[tensorboard]' "
                            "(log.csv is written either way)") from None
        self.writer = SummaryWriter(str(Path(run_dir) / FOLDER))

    def scalars(self, step: int, values: dict[str, float]) -> None:
        for name, v in values.items():
            self.writer.add_scalar(f"train/{name}", v, step)
        self.writer.flush()

    def image(self, step: int, path: Path) -> None:
        """A preview written by the family (a PNG), as image ``samples`` at ``step``."""
        from PIL import Image

        with Image.open(path) as im:
            self.writer.add_image("samples", np.asarray(im.convert("RGB")), step, dataformats="HWC")
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


def open_logger(kind: str, run_dir: Path | None) -> Any:
    """The extra logger of a run (None for "csv" alone or a run written nowhere)."""
    return TensorBoard(run_dir) if kind == "tensorboard" and run_dir is not None else None


__all__ = ["TensorBoard", "open_logger", "FOLDER"]
