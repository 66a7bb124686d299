"""A contributor's own data on the worker page, in Chromium against a real Daphne: a CSV picked
for a job that asks for local data is parsed on the device (errors with line numbers), kept in
IndexedDB only after consent, survives a reload, is what ``localShard`` hands to training, stops
being used when consent is withdrawn, is erased on request, and its bytes never reach the
server (every HTTP request and WebSocket frame of the page is recorded)."""

from __future__ import annotations

import pytest

from tests.jobs.fl_helpers import fl_job

pytestmark = [pytest.mark.browser, pytest.mark.slow]

SCHEMA = {"format": "csv", "features": 3, "classes": 2, "label_column": "label"}
# Distinctive values, so any copy of them in a request would be found.
CSV = (
    b"petal_zq,label,sepal_xw,stem_vk\n"
    b"1234.5678,1,-0.0625,77777.25\n"
    b"2.5,0,3.75,-91919.5\n"
    b"0,1,1e-3,4242.125\n"
    b"-8.5,0,0.5,31337\n"
)
BAD_CSV = b"petal_zq,label,sepal_xw,stem_vk\n1,0,2,3\n4,1,five,6\n"
SECRETS = [b"1234.5678", b"77777.25", b"91919.5", b"4242.125", b"31337", b"petal_zq", b"stem_vk"]

SHARD = """async ([job, data]) => {
  const src = document.querySelector('script[type="module"]').src;
  const m = await import(new URL("local-data.js", src).href);
  try {
    const s = await m.localShard(job, data);
    return {n: s.n, features: s.features, x: Array.from(s.x), y: Array.from(s.y),
            types: [s.x.constructor.name, s.y.constructor.name]};
  } catch (err) {
    return {error: err.code, name: err.name, message: err.message};
  }
}"""


@pytest.fixture
def enterprise(tenant):
    tenant.tier = "enterprise"
    tenant.save(update_fields=["tier"])
    return tenant


def test_a_csv_is_kept_on_the_device_with_consent_used_for_training_and_erased(
    daphne, browser, enterprise
):
    # Given: a running job that trains on contributors' own CSVs, and one on a public partition
    job = fl_job(
        enterprise,
        name="home sensors",
        model_sizes=[3, 2],
        data_source="contributor_local",
        local_data=SCHEMA,
        max_local_samples=3,
    )
    fl_job(enterprise, name="public digits")
    context = browser.new_context(viewport={"width": 390, "height": 844})
    page = context.new_page()
    errors: list[str] = []
    sent: list[tuple[str, bytes]] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("request", lambda r: sent.append((r.url, r.post_data_buffer or b"")))
    page.on(
        "websocket",
        lambda ws: ws.on(
            "framesent", lambda p: sent.append((ws.url, p if isinstance(p, bytes) else p.encode()))
        ),
    )
    # When: the contributor opens the worker page (and joins, so the socket carries traffic)
    page.goto(daphne.url + "/contribute/")
    page.get_by_test_id("join").click()
    page.wait_for_function("() => window.ccgscWorker.state().welcomed", timeout=15_000)
    section = page.get_by_test_id("local-data")
    page.wait_for_function("() => document.querySelector('#wf-local-data').dataset.ready === '1'")
    cards = page.get_by_test_id("local-data-job")
    assert cards.count() == 1
    card = page.locator(f'[data-testid="local-data-job"][data-job="{job.pk}"]')
    assert card.get_by_role("heading", name="home sensors").count() == 1
    assert "3 numeric feature columns and a label column named “label”" in card.inner_text()
    save = card.get_by_test_id("local-data-save")
    consent = card.get_by_label("I agree that this job trains on this data here")

    # A bad CSV: a clear error with its line, nothing to consent to
    card.get_by_label("Pick a CSV file").set_input_files(
        files=[{"name": "bad.csv", "mimeType": "text/csv", "buffer": BAD_CSV}]
    )
    parse = card.get_by_test_id("local-data-parse")
    page.wait_for_function(
        "() => document.querySelector('[data-testid=local-data-parse]').textContent"
        ".startsWith('Line')"
    )
    assert parse.inner_text() == "Line 3: “five” in column “sepal_xw” is not a number."
    assert consent.is_disabled()
    assert save.is_disabled()

    # The good CSV: parsed and summarised, kept only once consent is ticked
    card.get_by_label("Pick a CSV file").set_input_files(
        files=[{"name": "mine.csv", "mimeType": "text/csv", "buffer": CSV}]
    )
    card.get_by_test_id("local-data-summary").wait_for()
    assert card.get_by_test_id("local-data-rows").inner_text() == "4"
    assert card.get_by_test_id("local-data-classes").inner_text() == "0: 2 · 1: 2"
    assert "Each round trains on the first 3." in parse.inner_text()
    assert save.is_disabled()
    assert page.evaluate(SHARD, [str(job.pk), {}])["error"] == "no_data"
    consent.check()
    save.click()
    page.wait_for_function("() => document.querySelector('#wf-local-data').dataset.kept === '1'")

    # Then: it survives a reload, listed with what was parsed
    page.reload()
    page.wait_for_function("() => document.querySelector('#wf-local-data').dataset.ready === '1'")
    kept = section.get_by_test_id("local-data-kept-item")
    assert kept.count() == 1
    assert "home sensors" in kept.inner_text()
    assert "mine.csv" in kept.inner_text()
    assert kept.get_by_test_id("local-data-rows").inner_text() == "4"
    assert kept.get_by_test_id("local-data-classes").inner_text() == "0: 2 · 1: 2"

    # And: localShard gives training the rows, row-major, capped at max_samples
    invite_data = {"source": "contributor_local", "private": True, "schema": SCHEMA}
    full = page.evaluate(SHARD, [str(job.pk), invite_data])
    assert full == {
        "n": 4,
        "features": 3,
        "x": [1234.5677490234375, -0.0625, 77777.25, 2.5, 3.75, -91919.5]
        + [0, pytest.approx(1e-3), 4242.125, -8.5, 0.5, 31337],
        "y": [1, 0, 1, 0],
        "types": ["Float32Array", "Int32Array"],
    }
    capped = page.evaluate(SHARD, [str(job.pk), {**invite_data, "max_samples": 3}])
    assert (capped["n"], capped["y"], len(capped["x"])) == (3, [1, 0, 1], 9)
    changed = {**invite_data, "schema": {**SCHEMA, "label_column": "other"}}
    assert page.evaluate(SHARD, [str(job.pk), changed])["error"] == "bad_data"

    # When: consent is withdrawn, the data is not used; given again, it is
    kept.get_by_test_id("local-data-kept-consent").uncheck()
    page.wait_for_function(
        "() => !document.querySelector('[data-testid=local-data-kept-consent]').checked"
    )
    withdrawn = page.evaluate(SHARD, [str(job.pk), invite_data])
    assert (withdrawn["error"], withdrawn["name"]) == ("no_data", "LocalDataError")
    section.get_by_test_id("local-data-kept-consent").check()
    page.wait_for_function(
        "() => document.querySelector('[data-testid=local-data-kept-consent]').checked"
    )
    assert page.evaluate(SHARD, [str(job.pk), invite_data])["n"] == 4

    # When: the contributor erases it
    section.get_by_role("button", name="Erase my local data for home sensors").click()
    page.wait_for_function("() => document.querySelector('#wf-local-data').dataset.kept === '0'")
    # Then: training gets no_data, the list is empty, and a reload confirms it is gone
    assert page.evaluate(SHARD, [str(job.pk), invite_data])["error"] == "no_data"
    page.reload()
    page.wait_for_function("() => document.querySelector('#wf-local-data').dataset.ready === '1'")
    assert section.get_by_test_id("local-data-kept-item").count() == 0
    assert page.get_by_text("No local data is kept on this device.").is_visible()
    assert page.evaluate(SHARD, [str(job.pk), invite_data])["error"] == "no_data"

    # And: not one byte of the CSV went to the server, by HTTP or by WebSocket
    assert any("/ws/worker/" in url for url, _ in sent), "the socket's frames were recorded"
    assert any(url.endswith("/contribute/local-data-jobs.json") for url, _ in sent)
    for url, body in sent:
        for secret in SECRETS:
            assert secret not in body, f"{secret!r} was sent to {url}"
            assert secret.decode() not in url
    assert not errors, errors
    context.close()


def _png(width: int, height: int, rgb: tuple[int, int, int]) -> bytes:
    """A solid-colour 8-bit RGB PNG."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    row = b"\x00" + bytes(rgb) * width
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(row * height))
        + chunk(b"IEND", b"")
    )


def test_an_image_folder_is_decoded_to_grey_pixels_on_the_device(
    daphne, browser, enterprise, tmp_path
):
    # Given: a job on 4×4 grey images of cats and dogs, and a picked folder with a stray file
    # and a folder that is no class of the job
    schema = {
        "format": "images",
        "features": 16,
        "classes": 2,
        "image_width": 4,
        "image_height": 4,
        "class_names": ["cat", "dog"],
    }
    job = fl_job(
        enterprise, model_sizes=[16, 2], data_source="contributor_local", local_data=schema
    )
    folder = tmp_path / "pets"
    for name, rgb in {"cat/white.png": (255, 255, 255), "cat/black.png": (0, 0, 0)}.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(_png(12, 9, rgb))
    (folder / "dog").mkdir()
    (folder / "dog" / "red.png").write_bytes(_png(5, 5, (255, 0, 0)))
    (folder / "cow").mkdir()
    (folder / "cow" / "green.png").write_bytes(_png(5, 5, (0, 255, 0)))
    (folder / "notes.txt").write_text("not an image")
    page = browser.new_context(viewport={"width": 390, "height": 844}).new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(daphne.url + "/contribute/")
    page.wait_for_function("() => document.querySelector('#wf-local-data').dataset.ready === '1'")
    card = page.locator(f'[data-testid="local-data-job"][data-job="{job.pk}"]')
    # When: the contributor picks the folder, consents and keeps it
    card.get_by_label("Pick a folder of images").set_input_files(str(folder))
    card.get_by_test_id("local-data-summary").wait_for()
    assert card.get_by_test_id("local-data-rows").inner_text() == "3"
    assert card.get_by_test_id("local-data-classes").inner_text() == "cat: 2 · dog: 1"
    parse = card.get_by_test_id("local-data-parse").inner_text()
    assert "2 other files were left out (folders cow are not classes of this job)" in parse
    card.get_by_label("I agree that this job trains on this data here").check()
    card.get_by_test_id("local-data-save").click()
    page.wait_for_function("() => document.querySelector('#wf-local-data').dataset.kept === '1'")
    # Then: training gets 4×4 grey pixels in [0, 1] per image, labelled by folder
    shard = page.evaluate(SHARD, [str(job.pk), {"private": True, "schema": schema}])
    assert (shard["n"], shard["features"], len(shard["x"])) == (3, 16, 48)
    images = sorted(
        (label, shard["x"][i * 16 : (i + 1) * 16]) for i, label in enumerate(shard["y"])
    )
    expected = [(0, 0.0), (0, 1.0), (1, 0.299)]
    assert [label for label, _ in images] == [0, 0, 1]
    for (_, pixels), (_, grey) in zip(images, expected, strict=True):
        assert pixels == [pytest.approx(grey, abs=0.005)] * 16
    assert not errors, errors
