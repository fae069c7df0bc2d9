"""The `vae-deploy` root: registers one command per module and turns user errors into one line.

Command modules import torch-side code inside their functions, never at module level, so that
`vae-deploy run/encode/decode` work on an edge install without torch.
"""

from __future__ import annotations

import sys

import typer

from vae_deploy.cli import bench, decode, demo, encode, evaluate, export, run, sample, train, verify
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
app.command("sample")(sample.sample)
app.command("bench")(bench.bench)
app.command("run")(run.run)
app.command("encode")(encode.encode)
app.command("decode")(decode.decode)
app.command("demo")(demo.demo)


def main() -> None:
    """Console entry point: a user error prints `error: ...` on stderr and exits non-zero, no traceback."""
    try:
        # Without standalone mode click returns the exit code instead of exiting (130 for a Ctrl-C it caught).
        code = app(standalone_mode=False)
    except VaeDeployError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        print("interrupted: finished work was kept", file=sys.stderr)
        sys.exit(130)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except typer.Abort:
        print("aborted", file=sys.stderr)
        sys.exit(1)
    except Exception as exc:  # click's usage errors carry their own exit code and message
        import click

        if isinstance(exc, click.ClickException):
            exc.show()
            sys.exit(exc.exit_code)
        raise
    if isinstance(code, int) and code != 0:
        if code == 130:
            print("interrupted: finished work was kept", file=sys.stderr)
        sys.exit(code)


if __name__ == "__main__":
    main()
