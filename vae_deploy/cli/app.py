"""The `vae-deploy` root: registers one command per module and turns user errors into one line.

Command modules import torch-side code inside their functions, never at module level, so that
`vae-deploy run/encode/decode` work on an edge install without torch.
"""

from __future__ import annotations

import importlib
import os
import sys
import traceback
from typing import NoReturn

import typer

from vae_deploy import interrupts
from vae_deploy.cli import (
    bench,
    decode,
    demo,
    encode,
    encode_dataset,
    evaluate,
    export,
    run,
    sample,
    serve,
    slim,
    train,
    verify,
)
from vae_deploy.errors import VaeDeployError

app = typer.Typer(
    name="vae-deploy",
    help="Train a VAE, export encoder/decoder graphs, and stream video through ONNX Runtime or TensorRT.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

app.command("train")(train.train)
app.command("evaluate")(evaluate.evaluate)
app.command("export")(export.export)
app.command("verify")(verify.verify)
app.command("slim")(slim.slim)
app.command("sample")(sample.sample)
app.command("bench")(bench.bench)
app.command("run")(run.run)
app.command("encode")(encode.encode)
app.command("encode-dataset")(encode_dataset.encode_dataset)
app.command("decode")(decode.decode)
app.command("demo")(demo.demo)
app.command("serve")(serve.serve)


DEBUG_VARIABLE = "VAE_DEPLOY_DEBUG"  # set to 1 to see the traceback of any error, with its causes


def _usage_error_types() -> tuple[type[BaseException], ...]:
    """Click's exception base, wherever this Typer keeps it: recent Typer vendors Click as typer._click,
    older releases depend on the click package. Usage errors (unknown option, bad value, missing argument)
    derive from it and know how to show themselves."""
    found = []
    for module in ("typer._click.exceptions", "click.exceptions"):
        try:
            found.append(importlib.import_module(module).ClickException)
        except ImportError:
            continue
    return tuple(found)


def _stopped(what: str = "finished work was kept") -> NoReturn:
    print(f"{interrupts.stop_word()}: {what}", file=sys.stderr)
    sys.exit(interrupts.exit_code())


def _os_error_line(exc: OSError) -> str:
    where = f": {exc.filename}" if exc.filename else ""
    return f"{exc.strerror or exc}{where}"


def _debugging() -> bool:
    return os.environ.get(DEBUG_VARIABLE, "") not in ("", "0")


def _fail(exc: BaseException, line: str, code: int) -> NoReturn:
    """One `error:` line and exit `code`; with VAE_DEPLOY_DEBUG=1 the full traceback first, with the chain
    of causes (the library error under a one-line message), for expected errors as for bugs."""
    if _debugging():
        traceback.print_exception(type(exc), exc, exc.__traceback__)
    print(f"error: {line}", file=sys.stderr)
    sys.exit(code)


def main() -> None:
    """Console entry point. A user error prints `error: ...` on stderr and exits non-zero; a usage mistake
    gets Typer's usage message and exit 2; Ctrl-C and SIGTERM keep finished work and exit 130 / 143; any
    other failure is one line naming the error. VAE_DEPLOY_DEBUG=1 adds the traceback before any error line,
    expected or not."""
    interrupts.install_sigterm_handler()
    try:
        # Without standalone mode Typer returns the exit code instead of exiting (130 for a Ctrl-C it caught)
        # and re-raises usage errors, so every ending passes through here.
        code = app(standalone_mode=False)
    except SystemExit:
        raise
    except VaeDeployError as exc:
        _fail(exc, str(exc), exc.exit_code)
    except KeyboardInterrupt:
        _stopped()
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except typer.Abort:  # e.g. end of input at a prompt
        print("aborted", file=sys.stderr)
        sys.exit(1)
    except _usage_error_types() as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except Exception as exc:
        if isinstance(exc, OSError):  # a full disk, a read-only folder, a vanished file
            _fail(exc, _os_error_line(exc), 1)
        hint = "" if _debugging() else f" (rerun with {DEBUG_VARIABLE}=1 for the traceback)"
        _fail(exc, f"unexpected {type(exc).__name__}: {exc}{hint}", 1)
    if isinstance(code, int) and code != 0:
        if code == 130:  # Typer's value for a KeyboardInterrupt it caught (also SIGTERM's Terminated)
            _stopped()
        sys.exit(code)


if __name__ == "__main__":
    main()
