"""The web playground in a real browser: headless Chromium (Debian's package) driven by
Playwright against real ``kiapi serve --demo`` processes.

One server runs ernie, seedvr2 and the example third-party plugin ``kiapi-pillow`` (installed
the way pip would, as a ``.dist-info`` on PYTHONPATH); a second, with ``KIAPI_AUTH_TOKEN`` set,
checks the token flow. Sizes stay tiny (64 px, 2 steps) so the module runs in about a minute.
Every page must load without a console error or an uncaught exception.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from helpers_server import free_port, wait_until_healthy
from PIL import Image

from kiapi_core.ui.routes import CSP

REPO = Path(__file__).resolve().parents[1]
PILLOW = REPO / "docs" / "examples" / "kiapi-pillow"
CHROMIUM = "/usr/bin/chromium"
LAUNCH_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
               "--disable-background-networking", "--disable-component-update", "--disable-sync"]
TIMEOUT_S = 90.0
TOKEN = "correct-horse-battery-staple"
TINY = {"width": "64", "height": "64", "steps": "2"}

pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists() and not shutil.which("chromium"),
                                reason="Chromium is not installed (apt-get install chromium)")


# --- servers and browser ----------------------------------------------------------------------


class Server:
    """``kiapi serve --demo`` on a free loopback port, with the pillow example installed."""

    def __init__(self, tmp: Path, plugins: str, demo: bool = True, **env: str) -> None:
        site = tmp / "site"
        info = site / "kiapi_pillow-0.1.0.dist-info"
        info.mkdir(parents=True)
        (info / "METADATA").write_text("Metadata-Version: 2.1\nName: kiapi-pillow\nVersion: 0.1.0\n")
        (info / "entry_points.txt").write_text("[kiapi]\npillow = kiapi_pillow\n")
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        environ = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), str(PILLOW), *sys.path]),
                   "KIAPI_DATA_DIR": str(tmp / "data"), "KIAPI_LOAD_PLUGINS": plugins, "KIAPI_STRICT_PLUGINS": "1",
                   "KIAPI_CONFIG": "", "XDG_CONFIG_HOME": str(tmp / "cfg"), "MLX_DISABLE_COMPILE": "1",
                   "HF_HOME": str(tmp / "hf"), **env}
        self.log = open(tmp / "server.log", "w")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "kiapi_core.cli", "serve", *(["--demo"] if demo else []), "--port", str(self.port)],
            env=environ, stdout=self.log, stderr=subprocess.STDOUT)
        headers = {"Authorization": f"Bearer {env['KIAPI_AUTH_TOKEN']}"} if "KIAPI_AUTH_TOKEN" in env else {}
        self.http = httpx.Client(base_url=self.url, timeout=TIMEOUT_S, headers=headers)
        wait_until_healthy(self.http, self.proc, self.output, TIMEOUT_S)

    def output(self) -> str:
        self.log.flush()
        return Path(self.log.name).read_text()

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.http.close()
        self.log.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[Server]:
    running = Server(tmp_path_factory.mktemp("ui"), "kiapi-ernie,kiapi-seedvr2,kiapi-pillow")
    yield running
    running.stop()


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=LAUNCH_ARGS)
        yield chromium
        chromium.close()


class Console:
    """Console errors, uncaught exceptions and CSP violations of one page."""

    def __init__(self, page) -> None:
        self.problems: list[str] = []
        page.on("console", self._console)
        page.on("pageerror", lambda e: self.problems.append(f"uncaught: {e}"))

    def _console(self, message) -> None:
        if message.type in ("error", "warning"):
            self.problems.append(f"{message.type}: {message.text}")


@pytest.fixture
def page(browser, server):
    context = browser.new_context(base_url=server.url, viewport={"width": 1280, "height": 900})
    context.set_default_timeout(TIMEOUT_S * 1000)
    tab = context.new_page()
    console = Console(tab)
    yield tab
    context.close()
    # Whatever happened, leave no job running for the next test.
    for job in server.http.get("/v1/jobs", params={"status": "queued,running"}).json()["data"]:
        server.http.post(f"/v1/jobs/{job['id']}/cancel")
    assert console.problems == [], "\n".join(console.problems)


def _png(path: Path, size: int = 64) -> Path:
    Image.new("RGB", (size, size), (200, 120, 40)).save(path, "PNG")
    return path


def _wait(page, predicate: str, timeout_s: float = TIMEOUT_S) -> None:
    """Poll a JavaScript arrow function until it returns true (Playwright's own polling
    evaluates strings with eval(), which the page's CSP rightly refuses)."""
    deadline = time.monotonic() + timeout_s
    while not page.evaluate(predicate):
        assert time.monotonic() < deadline, f"timed out waiting for {predicate}"
        time.sleep(0.05)


def _open(page, url: str) -> None:
    """Go to a playground page and wait until it is drawn."""
    page.goto(url)
    page.wait_for_selector("main[data-ready]")


def _run(page) -> None:
    page.get_by_role("button", name="Run", exact=True).click()


def _result_image(page, timeout_s: float = TIMEOUT_S) -> dict:
    """Wait for the finished job's image and return its file id and natural size."""
    page.wait_for_selector(".job[data-status=succeeded] .artifact img", timeout=timeout_s * 1000)
    _wait(page, "() => document.querySelector('.job .artifact img')?.naturalWidth > 0")
    return page.evaluate("""() => { const img = document.querySelector('.job .artifact img');
        return {fileId: img.closest('.artifact').dataset.fileId, width: img.naturalWidth, height: img.naturalHeight}; }""")


# --- the tests ----------------------------------------------------------------------------------


def test_landing_lists_every_capability_under_a_strict_csp(page, server):
    response = page.goto("/")
    assert response.headers["content-security-policy"] == CSP
    assert "'unsafe-inline'" not in CSP
    page.keyboard.press("Tab")  # the first stop is "skip to content"
    assert page.evaluate("document.activeElement.textContent") == "Skip to content"
    for family, operations in (("ernie", ("generate", "edit", "train")), ("seedvr2", ("upscale",)),
                               ("pillow", ("resize", "convert"))):
        links = page.locator(f"section[aria-labelledby=cap-{family}] a.op")
        links.last.wait_for()
        hrefs = [links.nth(i).get_attribute("href") for i in range(links.count())]
        assert hrefs == [f"#/op/{family}/{name}" for name in operations]
    ernie = page.locator("section[aria-labelledby=cap-ernie]")
    ernie.get_by_text("Guide", exact=True).click()
    assert ernie.locator(".guide h2, .guide h3").count() > 0
    # Enter on a focused operation opens it.
    page.locator("a.op").first.focus()
    page.keyboard.press("Enter")
    page.wait_for_url(re.compile(r"#/op/ernie/generate$"))
    # A phone-sized window: no sideways scrolling (wide tables scroll inside their box).
    page.set_viewport_size({"width": 390, "height": 800})
    for url in ("/", "/#/op/ernie/generate", "/#/op/seedvr2/upscale", "/#/jobs", "/#/models"):
        _open(page, url)
        assert page.evaluate("document.documentElement.scrollWidth") <= 390, url


def test_generate_shows_live_progress_and_the_image(page, server):
    _open(page, "/#/op/ernie/generate")
    page.fill("[name=prompt]", "a lighthouse at dusk")
    for name, value in {**TINY, "steps": "4"}.items():
        page.fill(f"[name={name}]", value)
    page.evaluate("""() => { window.seen = []; new MutationObserver(() => {
        const live = document.querySelector('.run-panel .live'); const bar = document.querySelector('.run-panel progress');
        if (live) window.seen.push([live.textContent, bar && bar.hasAttribute('value') ? bar.value : null]);
      }).observe(document.querySelector('.run-panel'), {subtree: true, childList: true, characterData: true, attributes: true}); }""")
    _run(page)
    image = _result_image(page)
    assert (image["width"], image["height"]) == (64, 64)
    seen = page.evaluate("window.seen")
    labels = [label for label, _ in seen]
    assert any(re.fullmatch(r"denoising step \d/4", label) for label in labels), labels
    assert any(value is not None and 0 < value < 1 for _, value in seen), seen
    assert page.locator(".job .live").text_content() == "done"
    assert re.fullmatch(r"\d+(\.\d)? s|\d+ min \d+ s", page.locator(".job .elapsed").text_content())
    params = page.locator("details.params pre").text_content()
    assert '"width": 64' in params and '"seed"' in params
    job_id = page.locator(".job").get_attribute("data-job-id")
    assert server.http.get(f"/v1/jobs/{job_id}").json()["status"] == "succeeded"
    # "New seed" runs the same request again with another seed.
    page.get_by_role("button", name="New seed").click()
    _wait(page, f"() => document.querySelector('.job') && document.querySelector('.job').dataset.jobId !== '{job_id}'")
    _result_image(page)
    again = server.http.get(f"/v1/jobs/{page.locator('.job').get_attribute('data-job-id')}").json()
    assert again["params"]["prompt"] == "a lighthouse at dusk"


def test_upload_an_image_then_upscale_it(page, server, tmp_path):
    _open(page, "/#/op/seedvr2/upscale")
    page.set_input_files("input[name=image]", str(_png(tmp_path / "photo.png")))
    page.wait_for_selector("[data-field=image] .preview img")
    assert "photo.png" in page.locator("[data-field=image] .help").text_content()
    _run(page)
    image = _result_image(page)
    assert (image["width"], image["height"]) == (128, 128)  # the default resolution is 2x
    job = server.http.get(f"/v1/jobs/{page.locator('.job').get_attribute('data-job-id')}").json()
    uploaded = server.http.get(f"/v1/files/{job['inputs']['image']}").json()
    assert uploaded["filename"] == "photo.png"


def test_cancel_a_long_job(page, server):
    _open(page, "/#/op/ernie/generate")
    page.fill("[name=prompt]", "a long one")
    for name, value in {"width": "512", "height": "512", "steps": "100"}.items():
        page.fill(f"[name={name}]", value)
    _run(page)
    _wait(page, "() => /denoising step/.test(document.querySelector('.job .live')?.textContent)")
    page.get_by_role("button", name="Cancel").click()
    page.wait_for_selector(".job[data-status=canceled]")
    assert page.locator(".result").text_content().startswith("Canceled")
    job_id = page.locator(".job").get_attribute("data-job-id")
    job = server.http.get(f"/v1/jobs/{job_id}").json()
    assert job["status"] == "canceled" and job["artifacts"] == []
    # The jobs page shows it, live.
    _open(page, "/#/jobs")
    row = page.locator(f"tr[data-job-id='{job_id}']")
    assert row.locator(".badge").text_content() == "canceled"


def test_queue_position_and_the_jobs_page(page, server):
    """A job waiting behind a long one shows its place in the queue; the jobs page cancels the
    long one and deletes a finished one."""
    long = server.http.post("/v1/image/ernie/generate", json={"prompt": "slow", "width": 512, "height": 512,
                                                              "steps": 100, "mode": "async"}).json()["job_id"]
    while server.http.get(f"/v1/jobs/{long}", params={"wait": 5}).json()["status"] == "queued":
        pass
    quick = server.http.post("/v1/image/ernie/generate", json={"prompt": "quick", "mode": "async",
                                                               "width": 64, "height": 64, "steps": 2}).json()["job_id"]
    _open(page, f"/#/job/{quick}")
    _wait(page, "() => document.querySelector('.job .live')?.textContent === 'queued · next in line'")
    _open(page, "/#/jobs")
    page.locator(f"tr[data-job-id='{long}']").get_by_role("button", name="Cancel").click()
    page.locator(f"tr[data-job-id='{long}'] .badge", has_text="canceled").wait_for()
    page.locator(f"tr[data-job-id='{quick}'] .badge", has_text="succeeded").wait_for()
    page.locator(f"tr[data-job-id='{long}']").get_by_role("button", name="Delete").click()
    page.locator(f"tr[data-job-id='{long}']").wait_for(state="detached")
    assert server.http.get(f"/v1/jobs/{long}").status_code == 404


def test_a_stored_output_goes_to_edit_and_its_parameters_come_back(page, server):
    made = server.http.post("/v1/image/ernie/generate", json={"prompt": "a red barn", "width": 64, "height": 64,
                                                              "steps": 2, "seed": 7}, headers={"Accept": "application/json"})
    assert made.status_code == 200, made.text
    output, source_job = made.json()["artifacts"][0], made.json()["id"]
    _open(page, "/#/gallery")
    page.locator(f".tile[data-file-id='{output}']").click()
    page.wait_for_selector(".detail .artifact img")
    # "Use as input" hands the output to another operation's file field.
    page.locator(".detail .use select").select_option(f"#/op/ernie/edit?image={output}")
    page.wait_for_url(re.compile(r"#/op/ernie/edit\?image=file_"))
    page.wait_for_selector("[data-field=image] .preview img")
    page.fill("[name=prompt]", "the barn in snow")
    for name, value in TINY.items():
        page.fill(f"[name={name}]", value)
    _run(page)
    _result_image(page)
    job = server.http.get(f"/v1/jobs/{page.locator('.job').get_attribute('data-job-id')}").json()
    assert job["type"] == "ernie-edit" and job["inputs"]["image"] == output
    # Recall parameters: the gallery's action opens the form filled in from the job.
    _open(page, "/#/gallery")
    page.locator(f".tile[data-file-id='{output}']").click()
    page.get_by_role("link", name="Recall parameters").click()
    page.wait_for_url(re.compile(rf"#/op/ernie/generate\?job={source_job}"))
    _wait(page, "() => document.querySelector('[name=prompt]')?.value === 'a red barn'")
    assert page.input_value("[name=seed]") == "7" and page.input_value("[name=width]") == "64"


def test_the_example_plugin_gets_its_form_from_its_schema_alone(page, server, tmp_path):
    _open(page, "/#/op/pillow/resize")
    assert page.input_value("[name=width]") == "128"  # a fresh form starts from the declared example
    assert page.locator("input[type=file][name=image]").count() == 1
    width = page.locator("input[name=width]")
    assert (width.get_attribute("type"), width.get_attribute("min"), width.get_attribute("max")) == ("number", "1", "16384")
    assert page.locator("[data-field=scale] input[type=range]").count() == 1  # a known range: a slider
    assert page.locator("select[name=fit] option").all_text_contents() == ["contain", "stretch"]
    models = page.locator("select[name=model] option").all_text_contents()
    assert models[0].startswith("lanczos (default)") and len(models) == 6
    assert page.locator("select[name=format] option").all_text_contents()[1:] == ["png", "jpeg", "webp"]
    assert page.locator("details.more input[name=quality]").input_value() == "90"  # default shown, folded away
    page.set_input_files("input[name=image]", str(_png(tmp_path / "square.png", 80)))
    page.wait_for_selector("[data-field=image] .preview img")
    page.fill("[name=width]", "40")
    page.select_option("[name=model]", "nearest")
    _run(page)
    image = _result_image(page)
    assert (image["width"], image["height"]) == (40, 40)
    # The convert page: a required enum and a colour picker for the hex pattern.
    _open(page, "/#/op/pillow/convert")
    assert page.locator("details.more input[name=background]").get_attribute("type") == "color"


_SAMPLE_FILE_JS = """async (name) => {
    const canvas = document.createElement('canvas'); canvas.width = canvas.height = 48;
    const ctx = canvas.getContext('2d'); ctx.fillStyle = '#38c'; ctx.fillRect(0, 0, 48, 48);
    const blob = await new Promise((resolve) => canvas.toBlob(resolve, 'image/png'));
    const data = new DataTransfer(); data.items.add(new File([blob], name, {type: 'image/png'}));
    window.sample = data; }"""


def test_file_inputs_take_drops_and_pastes_and_groups_repeat(page, server):
    _open(page, "/#/op/pillow/convert")
    page.evaluate(_SAMPLE_FILE_JS, "dropped.png")
    page.evaluate("""() => document.querySelector('[data-field=image] .drop').dispatchEvent(
        new DragEvent('drop', {dataTransfer: window.sample, bubbles: true, cancelable: true}))""")
    page.locator("[data-field=image] .help", has_text="Uploaded dropped.png").wait_for()
    page.get_by_role("button", name="Clear").click()
    page.evaluate(_SAMPLE_FILE_JS, "pasted.png")
    page.evaluate("""() => document.body.dispatchEvent(
        new ClipboardEvent('paste', {clipboardData: window.sample, bubbles: true, cancelable: true}))""")
    page.locator("[data-field=image] .help", has_text="Uploaded pasted.png").wait_for()
    names = [f["filename"] for f in server.http.get("/v1/files").json()["data"][:2]]
    assert names == ["pasted.png", "dropped.png"]
    # Stored files: pick the earlier upload instead.
    page.get_by_role("button", name="Stored files…").click()
    page.locator(".picker .thumb[title='dropped.png']").click()
    page.locator("[data-field=image] .help", has_text="Using dropped.png").wait_for()
    # LoRAs (an array of objects) are repeatable groups named like the request fields.
    _open(page, "/#/op/ernie/generate")
    page.locator("details.more > summary").click()
    add = page.get_by_role("button", name="Add lora")
    add.click()
    add.click()
    assert page.locator("input[type=file][name='loras[1].file']").count() == 1
    assert page.input_value("[name='loras[0].scale']") == "1"
    page.locator("fieldset.group").first.get_by_role("button", name="Remove").click()
    assert page.locator("fieldset.group").count() == 1
    assert page.locator("[name='loras[0].scale']").count() == 1 and page.locator("[name='loras[1].scale']").count() == 0


def test_models_page_shows_the_budget_and_loads_a_model(page, server):
    _open(page, "/#/models")
    page.wait_for_selector("meter")
    row = page.locator("li.model[data-model='pillow:box']")
    row.get_by_role("button", name="Load").click()
    row.locator(".badge", has_text="loaded").wait_for()
    assert any(r["family"] == "pillow" and r["model"] == "box" for r in server.http.get("/v1/memory").json()["resident"])
    row.get_by_role("button", name="Unload").click()
    row.get_by_role("button", name="Load").wait_for()


def test_every_swagger_example_runs_as_it_stands(server):
    """The request example of every operation is accepted (202) and the quick ones succeed."""
    index = server.http.get("/openapi.json").json()["x-kiapi-capabilities"]
    ran = []
    # The quick ones first: ernie's (real work at 512 px) then wait behind them and are canceled
    # while still queued. Accepted (202) is what matters for those.
    for entry in sorted(index, key=lambda e: e["name"] == "ernie"):
        document = server.http.get(entry["openapi"]).json()
        for path in entry["operations"]:
            body = document["paths"][path]["post"]["requestBody"]["content"]["application/json"]
            example = dict(body["examples"]["default"]["value"])
            if "mode" in document["components"]["schemas"][body["schema"]["$ref"].rsplit("/", 1)[-1]]["properties"]:
                example["mode"] = "async"
            response = server.http.post(path, json=example)
            assert response.status_code == 202, (path, response.text)
            job_id = response.json()["job_id"]
            if entry["name"] == "ernie":
                server.http.post(f"/v1/jobs/{job_id}/cancel")
            ran.append((path, job_id))
    for path, job_id in ran:
        job = server.http.get(f"/v1/jobs/{job_id}", params={"wait": 30}).json()
        while job["status"] in ("queued", "running"):
            job = server.http.get(f"/v1/jobs/{job_id}", params={"wait": 30}).json()
        expected = "canceled" if path.startswith("/v1/image/ernie/") else "succeeded"
        assert job["status"] == expected, (path, job)
    assert len(ran) == 6


def test_token_flow(browser, tmp_path):
    # Not in demo mode: ernie's weights are missing, and the pages say how to get them.
    guarded = Server(tmp_path, "kiapi-ernie,kiapi-pillow", demo=False, KIAPI_AUTH_TOKEN=TOKEN)
    try:
        context = browser.new_context(base_url=guarded.url)
        context.set_default_timeout(TIMEOUT_S * 1000)
        tab = context.new_page()
        console = Console(tab)
        urls: list[str] = []
        tab.on("request", lambda r: urls.append(r.url))
        tab.goto("/")
        dialog = tab.locator("#token-dialog")
        dialog.wait_for(state="visible")
        tab.fill("#token-input", "wrong")
        tab.get_by_role("button", name="Continue").click()
        tab.locator("#token-error", has_text="refused").wait_for()
        tab.fill("#token-input", TOKEN)
        tab.get_by_role("button", name="Continue").click()
        tab.locator("section[aria-labelledby=cap-pillow]").wait_for()
        assert tab.evaluate("sessionStorage.getItem('kiapi.token')") == TOKEN
        # Work with the token: upload, run, and the output shown (fetched with the header).
        _open(tab, "/#/op/pillow/convert")
        tab.set_input_files("input[name=image]", str(_png(tmp_path / "in.png")))
        tab.wait_for_selector("[data-field=image] .preview img")
        tab.select_option("[name=format]", "webp")
        _run(tab)
        _result_image(tab)
        # Missing weights: the model select and the models page name the command to run.
        _open(tab, "/#/op/ernie/generate")
        assert "weights missing" in tab.locator("select[name=model] option").first.text_content()
        assert tab.locator("[data-field=model] .note code").text_content() == "kiapi activate ernie:turbo"
        _open(tab, "/#/models")
        turbo = tab.locator("li.model[data-model='ernie:turbo']")
        assert turbo.locator("code").text_content() == "kiapi activate ernie:turbo"
        assert turbo.get_by_role("button").count() == 0
        # Once per browser session: a reload does not ask again.
        tab.reload()
        tab.locator("section.card, h1").first.wait_for()
        assert not dialog.is_visible()
        assert all(TOKEN not in url for url in urls), "the token must never travel in a URL"
        assert console.problems == [], "\n".join(console.problems)
        context.close()
        # The API itself still refuses anonymous callers.
        assert httpx.get(f"{guarded.url}/v1/files").status_code == 401
        assert httpx.get(f"{guarded.url}/").status_code == 200
    finally:
        guarded.stop()


def test_swagger_ui_executes_the_prefilled_example(browser, server):
    """The complaint that started it: in Swagger UI, Execute on the pre-filled body must work."""
    context = browser.new_context(base_url=server.url)
    context.set_default_timeout(TIMEOUT_S * 1000)
    tab = context.new_page()
    try:
        tab.goto("/v1/image/pillow/docs")
        tab.locator(".opblock-summary", has_text="/v1/image/pillow/resize").click()
        body = tab.locator("textarea.body-param__text")
        assert '"width": 128' in body.input_value() and "data:image/png;base64," in body.input_value()
        tab.locator(".btn.execute").click()
        status = tab.locator(".live-responses-table .response .response-col_status")
        status.wait_for()
        assert status.text_content().strip().startswith("200")
    finally:
        context.close()
