"""``batterytwin bench run`` (a test on this machine) and ``bench request`` (over MQTT)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Annotated, Any

import typer

app = typer.Typer(help="The virtual test bench.", no_args_is_help=True)


def _load_request(file: Path | None, overrides: dict[str, Any]) -> Any:
    from cloud.testbench.messages import RequestError, parse_request

    body: dict[str, Any] = json.loads(file.read_text()) if file is not None else {}
    body |= {k: v for k, v in overrides.items() if v is not None}
    try:
        return parse_request(json.dumps(body))
    except RequestError as error:
        raise typer.BadParameter(str(error)) from None


@app.command()
def run(
    test_type: Annotated[
        str | None, typer.Argument(help="capacity, hppc, ... (or in --file)")
    ] = None,
    file: Annotated[Path | None, typer.Option(help="A JSON test request.")] = None,
    unit: Annotated[str, typer.Option(help="Unit under test.")] = "Cell-01",
    parameter_set: Annotated[str | None, typer.Option(help="ECM parameter set.")] = None,
    out: Annotated[Path | None, typer.Option(help="Write the samples here (CSV).")] = None,
) -> None:
    """Run a test on this machine (no cloud) and print its outcome as JSON."""
    from cloud.testbench.models_source import ModelError, built
    from cloud.testbench.procedures import ABUSE_TESTS, plan_test
    from cloud.testbench.runner import Chunk, Finished, run_test

    overrides: dict[str, Any] = {"test_type": test_type}
    if file is None:
        overrides["unit_under_test"] = unit
    if parameter_set is not None:
        overrides["model"] = {"kind": "ecm", "parameter_set": parameter_set}
    request = _load_request(file, overrides)
    rows: list[tuple[Any, ...]] = []
    try:
        with built(
            request.model,
            ambient_c=request.ambient_c,
            ageing=request.test_type not in ABUSE_TESTS,
        ) as unit_twin:
            for item in run_test(unit_twin.twin, plan_test(request, unit_twin.ratings)):
                if isinstance(item, Chunk):
                    rows.extend(zip(*item.columns.values(), strict=True))
                elif isinstance(item, Finished):
                    result = {"status": item.status, **item.outcome}
    except (ModelError, ValueError) as error:
        raise typer.BadParameter(str(error)) from None
    if out is not None:
        from cloud.testbench.messages import DATA_VARIABLES

        lines = [",".join(DATA_VARIABLES)]
        lines += [",".join("" if v is None else repr(v) for v in row) for row in rows]
        out.write_text("\n".join(lines) + "\n")
    typer.echo(json.dumps(result, indent=2))


@app.command()
def request(
    file: Annotated[Path, typer.Argument(help="A JSON test request.")],
    broker: Annotated[str, typer.Option(help="mqtt://[user:password@]host[:port]")] = (
        "mqtt://127.0.0.1:1884"
    ),
    timeout_s: Annotated[float, typer.Option(help="Give up after this long.")] = 600.0,
) -> None:
    """Publish a request on the bench's request topic and print its status messages."""
    from urllib.parse import urlsplit

    import aiomqtt

    from cloud.testbench.messages import FINAL_STATUSES
    from cloud.testbench.topics import BenchTopics

    req = _load_request(file, {})
    url = urlsplit(broker)
    if url.scheme != "mqtt" or not url.hostname:
        raise typer.BadParameter(f"broker must be mqtt://host[:port], got {broker!r}")
    topics = BenchTopics()

    async def follow() -> None:
        async with aiomqtt.Client(
            url.hostname or "", url.port or 1883, username=url.username, password=url.password
        ) as client:
            await client.subscribe(topics.results(req.uuid), qos=1)
            await client.publish(topics.requests, req.model_dump_json(exclude_none=True), qos=1)
            async for message in client.messages:
                payload = message.payload
                if not isinstance(payload, bytes | bytearray | str):
                    continue
                body = json.loads(payload)
                if body.get("kind") != "status":
                    continue
                typer.echo(json.dumps(body))
                if body["status"] in FINAL_STATUSES or body["status"] == "rejected":
                    return

    asyncio.run(asyncio.wait_for(follow(), timeout_s))
