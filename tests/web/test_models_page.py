"""The models exchange page in Chromium: the folder tree, an admin's upload of a real FMU
(the ECM twin exported as C and compiled here), its details, the download's bytes,
refused files, versions and delete, and a read-only user who sees no upload form.

Each test uses its own chemistry folder and test name: the served database is shared
with the other page tests.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.cloud.test_models_exchange import make_fmu
from tests.web.conftest import LiveCloud, auth_headers, screenshot, sign_in


@pytest.fixture(scope="module")
def cell_fmu(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """The nmc_okane2022 ECM as an FMI 2.0 FMU (``batterytwin fmu export --format c``)."""
    from twin.fmu.export_c import export_c_fmu
    from twin.params import load_parameter_set

    out = tmp_path_factory.mktemp("fmu") / "cell.fmu"
    return export_c_fmu(load_parameter_set("nmc_okane2022"), out, fmi_version=2).read_bytes()


def _folder(tag: str) -> dict[str, str]:
    return {
        "category": "performance_ageing",
        "level": "cell",
        "chemistry": f"nmc_{tag}",
        "kind": "physics_based",
    }


def _fill_upload(
    page: Any, *, folder: dict[str, str], test_name: str, name: str, content: bytes
) -> None:
    page.set_input_files(
        "#upload-file",
        files=[{"name": name, "mimeType": "application/octet-stream", "buffer": content}],
    )
    page.select_option("#upload-category", folder["category"])
    page.select_option("#upload-level", folder["level"])
    page.fill("#upload-chemistry", folder["chemistry"])
    page.select_option("#upload-kind", folder["kind"])
    page.fill("#upload-test", test_name)


def test_an_admin_uploads_browses_downloads_and_deletes(
    page: Any, live_cloud: LiveCloud, cell_fmu: bytes, tmp_path: Path
) -> None:
    tag = uuid.uuid4().hex[:6]
    folder = _folder(tag)
    test_name = f"Capacity-{tag}"
    sign_in(page, live_cloud, path="/ui/models")
    page.wait_for_selector("body[data-ready=yes]")
    assert page.is_visible("#upload-card") and page.is_hidden("[data-testid=upload-refused]")

    # a file that is not an FMU: the server's reason, nothing stored
    _fill_upload(page, folder=folder, test_name=test_name, name="notes.fmu", content=b"not a zip")
    page.click("#upload-submit")
    page.wait_for_selector("#message.error")
    refusal = httpx.post(
        f"{live_cloud.url}/api/models/",
        data={**folder, "test_name": test_name},
        files={"file": ("notes.fmu", b"not a zip")},
        headers=auth_headers(live_cloud, "admin"),
    )
    assert refusal.status_code == 422
    assert refusal.json()["detail"] in (page.text_content("#message") or "")
    path = f"{'/'.join(folder.values())}/{test_name}"
    assert page.locator(f"[data-testid=tree-test][data-path='{path}']").count() == 0

    # the real FMU
    _fill_upload(page, folder=folder, test_name=test_name, name="cell.fmu", content=cell_fmu)
    page.fill("#upload-note", "ECM twin, C export")
    page.click("#upload-submit")
    page.wait_for_selector("#message.info")
    assert f"{test_name}_v1.fmu" in (page.text_content("#message") or "")
    leaf = page.locator(f"[data-testid=tree-test][data-path='{path}']")
    leaf.wait_for()
    assert "v1" in (leaf.text_content() or "")
    # the tree shows the hierarchy down to the test, each level open and counted
    for depth, testid in enumerate(("tree-category", "tree-level", "tree-chemistry", "tree-kind")):
        node_path = "/".join(list(folder.values())[: depth + 1])
        node = page.locator(f"[data-testid={testid}][data-path='{node_path}']")
        assert node.get_attribute("open") is not None
    where = "/".join(list(folder.values())[:3])
    chemistry = page.locator(f"[data-testid=tree-chemistry][data-path='{where}'] > summary")
    assert chemistry.text_content() == f"{folder['chemistry']} 1"

    # details as the API has them
    model_id = int(page.url.split("model=")[1])
    detail = httpx.get(
        f"{live_cloud.url}/api/models/{model_id}/", headers=auth_headers(live_cloud, "admin")
    ).json()
    assert page.text_content("#model-title") == f"{test_name}_v1.fmu"
    assert page.text_content("[data-testid=model-fmi]") == "2.0"
    assert page.text_content("[data-testid=model-kind]") == "Physics-based models"
    assert page.text_content("[data-testid=model-platforms]") == ", ".join(
        detail["model_description"]["platforms"]
    )
    names = page.eval_on_selector_all(
        "[data-testid=variable-row]", "rows => rows.map(r => r.dataset.name)"
    )
    assert names == [v["name"] for v in detail["model_description"]["variables"]]
    page.select_option("[data-testid=causality]", "output")
    variables = detail["model_description"]["variables"]
    outputs = [v["name"] for v in variables if v["causality"] == "output"]
    assert (
        page.eval_on_selector_all(
            "[data-testid=variable-row]", "rows => rows.map(r => r.dataset.name)"
        )
        == outputs
    )

    # the download is the uploaded file, under the exchange's name
    with page.expect_download() as info:
        page.click("[data-testid=download]")
    download = info.value
    assert download.suggested_filename == f"{test_name}_v1.fmu"
    saved = tmp_path / "downloaded.fmu"
    download.save_as(saved)
    assert saved.read_bytes() == cell_fmu

    # a second version, then deleting it leaves the first
    second = make_fmu(model=f"Web{tag}")
    page.set_input_files(
        "#upload-file",
        files=[{"name": "cell2.fmu", "mimeType": "application/octet-stream", "buffer": second}],
    )
    page.click("#upload-submit")
    page.wait_for_selector(f"#model-title:text-is('{test_name}_v2.fmu')")
    assert page.locator("[data-testid=version-row]").count() == 2
    assert "2 versions" in (leaf.text_content() or "")
    page.once("dialog", lambda dialog: dialog.accept())
    page.click("[data-testid=delete]")
    page.wait_for_selector(f"#model-title:text-is('{test_name}_v1.fmu')")
    assert page.locator("[data-testid=version-row]").count() == 1
    assert "versions" not in (leaf.text_content() or "")
    page.select_option("[data-testid=causality]", "")
    page.evaluate("window.scrollTo({top: 0, behavior: 'instant'})")
    screenshot(page, "models")


def test_a_read_only_user_browses_and_downloads_but_may_not_upload(
    page: Any, live_cloud: LiveCloud
) -> None:
    tag = uuid.uuid4().hex[:6]
    folder = _folder(tag)
    content = make_fmu(model=f"Ro{tag}")
    stored = httpx.post(
        f"{live_cloud.url}/api/models/",
        data={**folder, "test_name": f"Overcharge-{tag}"},
        files={"file": ("x.fmu", content)},
        headers=auth_headers(live_cloud, "admin"),
    )
    assert stored.status_code == 201, stored.text
    refused = httpx.post(
        f"{live_cloud.url}/api/models/",
        data={**folder, "test_name": f"Overcharge-{tag}"},
        files={"file": ("x.fmu", content)},
        headers=auth_headers(live_cloud, "operator"),
    )
    assert refused.status_code == 403 and "write" in refused.json()["detail"]

    sign_in(page, live_cloud, username="operator", path="/ui/models")
    page.wait_for_selector("body[data-ready=yes]")
    assert page.is_hidden("#upload-card")
    assert "read access" in (page.text_content("[data-testid=upload-refused]") or "")
    path = f"{'/'.join(folder.values())}/Overcharge-{tag}"
    page.click(f"[data-testid=tree-test][data-path='{path}']")
    page.wait_for_selector(f"#model-title:text-is('Overcharge-{tag}_v1.fmu')")
    assert page.is_hidden("[data-testid=delete]")
    with page.expect_download() as info:
        page.click("[data-testid=download]")
    assert Path(info.value.path()).read_bytes() == content
    # the chosen model is in the URL: a reload (or a shared link) opens it again
    page.reload()
    page.wait_for_selector(f"#model-title:text-is('Overcharge-{tag}_v1.fmu')")
