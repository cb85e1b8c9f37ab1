"""The ``difflab`` command: train, sample, evaluate and report."""
from __future__ import annotations

import os

# OpenMP threads that busy-wait make multi-threaded CPU training tens of times slower as soon as another process
# shares the cores (measured: 0.07 against 4.3 steps/s); passive waiting avoids that.  Set here, where the command
# starts and before torch is imported, never by importing the library; a value the user has set is kept.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import sys  # noqa: E402
import traceback  # noqa: E402
import warnings  # noqa: E402
from typing import NoReturn  # noqa: E402

from ..errors import UserError  # noqa: E402
from . import edit as edit_cmd  # noqa: E402
from . import evaluate as evaluate_cmd  # noqa: E402
from . import report as report_cmd
from . import sample as sample_cmd
from . import train as train_cmd
from . import train_classifier as train_classifier_cmd
from . import train_clip as train_clip_cmd
from . import tune_steps as tune_steps_cmd
from . import distill as distill_cmd
from . import train_autoencoder as train_autoencoder_cmd
from . import cascade as cascade_cmd
from . import export_diffusers as export_diffusers_cmd
from . import import_diffusers as import_diffusers_cmd
from . import serve as serve_cmd
from . import ema as ema_cmd
from . import prepare_data as prepare_data_cmd

COMMANDS = [train_cmd, sample_cmd, evaluate_cmd, report_cmd, train_classifier_cmd, train_clip_cmd, tune_steps_cmd, edit_cmd, distill_cmd, cascade_cmd,
            train_autoencoder_cmd, import_diffusers_cmd, export_diffusers_cmd,
            serve_cmd, ema_cmd, prepare_data_cmd]


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors: ``difflab: error: COMMAND: message`` and exit 2 (the usage stays in --help)."""

    def error(self, message: str) -> NoReturn:
        where = self.prog.removeprefix("difflab").strip()
        self.exit(2, f"difflab: error: {where + ': ' if where else ''}{message} (see {self.prog} --help)\n")


def parser() -> argparse.ArgumentParser:
    p = _Parser(prog="difflab", description="Train, sample, measure and edit diffusion models.")
    from .. import __version__

    p.add_argument("--version", action="version", version=f"difflab {__version__}")
    p.add_argument("--debug", action="store_true",
                   help="show the traceback of an unexpected error (also: environment DIFFLAB_DEBUG=1)")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for cmd in COMMANDS:
        cmd.add_parser(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point: a user mistake prints one line and exits 2; an interrupt exits 130; any other error one line
    naming the command and the exception, exit 1 (its traceback with --debug or DIFFLAB_DEBUG=1)."""
    args = parser().parse_args(argv)
    debug = args.debug or os.environ.get("DIFFLAB_DEBUG", "") not in ("", "0")
    warnings.formatwarning = lambda msg, cat, *a, **k: f"difflab: warning: {msg}\n"
    try:
        if getattr(args, "threads", None) is not None:
            if args.threads < 1:
                raise UserError(f"--threads must be at least 1, got {args.threads}")
            import torch

            torch.set_num_threads(args.threads)
        return int(args.handler(args) or 0)
    except UserError as e:
        print(f"difflab: error: {' '.join(str(e).splitlines())}", file=sys.stderr)
        return 2
    except OSError as e:  # a missing path, a permission, a full disk: the file named, no traceback
        where = f": {e.filename}" if getattr(e, "filename", None) else ""
        print(f"difflab: error: {e.strerror or e}{where}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("difflab: interrupted; the last checkpoint is kept", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001 - the last resort: one line, never a bare traceback
        return _unexpected(args.command, e, debug)


def _unexpected(command: str, e: BaseException, debug: bool) -> int:
    """Report an error no check anticipated: one line naming the command and the exception, exit 1."""
    if debug:
        traceback.print_exception(e, file=sys.stderr)
    lines = str(e).strip().splitlines()
    detail = f": {lines[0][:300]}" if lines else ""
    hint = "" if debug else " (run with --debug or DIFFLAB_DEBUG=1 for the traceback)"
    print(f"difflab: error: {command} failed with {type(e).__name__}{detail}{hint}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
