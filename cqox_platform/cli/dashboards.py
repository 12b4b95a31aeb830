"""`cqox-platform dashboards render`: the Grafana dashboards, generated from the SLO spec, rules and gauges."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from cqox_platform.cli.group import ErrorGroup

#: ``--check`` found a shipped file out of date: a verdict, as the other commands' exit 3.
VERDICT_FAILED = 3


@click.group("dashboards", cls=ErrorGroup)
def dashboards() -> None:
    """Grafana dashboards as code (SLOs, backups, canary rollouts)."""


@dashboards.command("render")
@click.option(
    "--spec",
    "spec_file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="An SLO spec of your own (default: the shipped one, which the shipped dashboards are built from).",
)
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Write <uid>.json and grafana-dashboards.yaml here instead of over the shipped files in the package.",
)
@click.option(
    "--check",
    is_flag=True,
    help=f"Write nothing; exit {VERDICT_FAILED} when a shipped file differs from what is built now.",
)
def dashboards_render(spec_file: Path | None, out: Path | None, check: bool) -> None:
    """Build the dashboards and write them as Grafana JSON plus ConfigMaps for Grafana's dashboard sidecar.

    \b
    Examples:
      cqox-platform dashboards render                       # refresh the shipped files after changing a source
      cqox-platform dashboards render --check               # CI: fail when they are out of date
      cqox-platform dashboards render --spec my-slos.yaml --out /tmp/dashboards
    """
    from cqox_platform.deploy import dashboards as gen

    models = gen.shipped_models(spec_file) if spec_file else gen.shipped_models()
    files = gen.rendered_files(models)
    if out is not None:
        files = {out / path.name: text for path, text in files.items()}
    if check:
        stale = gen.stale_files(files, out or gen.DASHBOARD_DIR)
        if stale:
            listed = "\n  ".join(str(p) for p in stale)
            click.echo(
                f"dashboards render: {len(stale)} file(s) differ from what the sources build now:\n  {listed}\n"
                "run `cqox-platform dashboards render` and commit the result.",
                err=True,
            )
            sys.exit(VERDICT_FAILED)
        click.echo(f"{len(files)} dashboard file(s) up to date")
        return
    for path, text in files.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        click.echo(str(path))
