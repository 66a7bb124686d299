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
