"""``batterytwin demo``: the closed-loop demo on embedded defaults, no setup."""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path
from typing import Annotated

import typer

from batterytwin.console import clear_errors, progress_bar

__all__ = ["demo"]

_DEFAULT_DAYS = 7.0  # demo.config.DEFAULT_DAYS, without importing pydantic at CLI import


def _days(value: float) -> float:
    if not 0.0 < value <= 365.0:
        raise typer.BadParameter(f"must be more than 0 and at most 365 twin days, got {value:g}")
    return value


def demo(
    days: Annotated[
        float,
        typer.Option(
            callback=_days,
            help="Twin days to run (default: a week, about 2 minutes on two cores).",
        ),
    ] = _DEFAULT_DAYS,
    out: Annotated[
        Path, typer.Option(help="Where summary.json, report.html and the database go.")
    ] = Path("out/demo"),
    serve: Annotated[
        bool,
        typer.Option(help="Keep serving the dashboard after the run (Ctrl-C stops it)."),
    ] = False,
    port: Annotated[
        int | None,
        typer.Option(
            min=0, max=65535, help="HTTP port of the cloud (default: 8000 with --serve, else free)."
        ),
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed of the packs, loads and sensors.")] = 0,
) -> None:
    """Cloud + a Pillar 1 charging hub + a Pillar 2 home, closed loop, at high speed.

    EIS -> DRT -> ECM update to the edge, SoH, SoW, balancing, an over-temperature alarm.

    Prints a summary table; writes OUT/summary.json, OUT/report.html and OUT/cloud.db.
    """
    from rich.console import Console

    from demo.config import DemoConfig
    from demo.report import print_summary
    from demo.run import DemoHooks, DemoOutputs, run_demo
    from demo.serve import DemoError

    console = Console()
    # the BMSs log their alarms as warnings; the summary reports them
    logging.getLogger("virtual_bms").setLevel(logging.ERROR)
    with clear_errors(DemoError, ValueError, OSError):
        config = DemoConfig(days=days, out_dir=out, serve=serve, port=port, seed=seed)

        def ready(url: str, user: str, password: str) -> None:
            if serve:
                console.print(f"Dashboard: {url}  login: {user} / {password}")

        closed: list[bool] = []

        def finished(summary: dict[str, object], outputs: DemoOutputs) -> None:
            closed.append(bool(summary.get("loop_closed")))
            print_summary(summary, console)
            console.print(f"Wrote {outputs.summary_json} and {outputs.report_html}")
            if serve:
                console.print("Serving the dashboard until Ctrl-C.")

        with contextlib.ExitStack() as bar:
            update = bar.enter_context(progress_bar("demo"))

            def progress(done_s: float, total_s: float) -> None:
                update(done_s, total_s)
                if done_s >= total_s:
                    bar.close()  # the summary prints after the run

            run_demo(config, hooks=DemoHooks(progress=progress, ready=ready, finished=finished))
    if closed and not closed[0]:
        console.print(
            "[red]error[/]: the loop did not close (no ECM update from the cloud reached the "
            "hub): see the estimator errors above, or run more days (the first EIS sweep "
            "comes 6 twin hours in)"
        )
        raise typer.Exit(1)
