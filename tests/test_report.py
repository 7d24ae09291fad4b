"""The visual report: rendered and filtered in headless Chromium, escaping, boxes, missing data, bad records."""

from __future__ import annotations

import json
import re
import shutil
import tempfile
from pathlib import Path

import pytest
from PIL import Image

from harness.cli import main
from harness.records import read_records
from harness.report import write_report
from harness.report.boxes import Detection, detections, scale_box
from harness.report.images import make_thumbnail
from harness.report.render import _overlay
from toy import SMALL_SYNTHETIC_TASK, write_toy_task

HOSTILE = "</script><script>alert(1)</script>"
HOSTILE_QUESTION = f"How many? {HOSTILE}<img src=x onerror=\"document.title='pwned'\"> @@CARDS@@"
CHROMIUM_FLAGS = ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic",
                  "--window-size=1280,900")


def expected_boxes(record: dict) -> int:
    """Distinct valid gd_detect boxes of a record, computed here independently of the report's code."""
    seen = set()
    for call in record["tool_calls"]:
        if call["tool"] == "gd_detect" and isinstance(call.get("result"), list):
            seen.update((d["label"], tuple(d["box"])) for d in call["result"])
    return len(seen)


def set_question(data: Path, row: int, question: str) -> None:
    path = data / "toy" / "counting" / "test.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    rows[row]["question"] = question
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory):
    """The reference system with noisy oracle tools on the small synthetic task (boxes, right and wrong
    answers) and on the toy task (no reference programs: system errors, a broken row, a hostile question,
    image files that do not exist), reported with images for the first 8 samples of each task."""
    root = tmp_path_factory.mktemp("report-run")
    include, data = write_toy_task(root, n=6, broken_rows=(3,))
    set_question(data, 0, HOSTILE_QUESTION)
    (include / "synthetic_small.yaml").write_text(SMALL_SYNTHETIC_TASK)
    out = root / "run"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HARNESS_CACHE_DIR", str(root / "cache"))
        # The toy task's images do not exist on purpose (so no preflight), and its samples fail for the
        # infrastructure's sake (exit code 3).
        assert main(["run", "--system", "reference", "--tasks", "synthetic_small,toy_counting", "--limit", "12",
                     "--include-path", str(include), "--data-dir", str(data), "--output-path", str(out),
                     "--system-args", "tool_options.oracle.noise=0.5", "--skip-preflight"]) == 3
        # No --data-dir: the report reads the images from where run.json says the run read them.
        assert main(["report", str(out), "--max-samples", "8"]) == 0
    records = [*read_records(out / "samples_synthetic_small.jsonl"), *read_records(out / "samples_toy_counting.jsonl")]
    synthetic = [r for r in records if r["task"] == "synthetic_small"]
    # The filters below are only meaningful when every kind of card is there.
    assert {r["status"] for r in records} == {"ok", "system_error", "data_error"}
    assert 0 < sum(r["scores"]["strict"] == 1 for r in synthetic) < len(synthetic)
    return out / "report.html", records


# --------------------------------------------------------------------------- in a real browser

@pytest.fixture(scope="module")
def browser():
    chromium, driver_path = shutil.which("chromium"), shutil.which("chromedriver")
    if not chromium or not driver_path:
        pytest.skip("the browser test needs Debian's chromium and chromium-driver packages "
                    "(apt-get install chromium chromium-driver)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="report-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={profile}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service(driver_path))
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def shown(driver, expected: int | None = None) -> int:
    """The page's count of shown cards (waiting for it to become ``expected``), checked against the cards."""
    from selenium.webdriver.support.ui import WebDriverWait

    if expected is not None:
        WebDriverWait(driver, 5).until(lambda d: d.find_element("id", "shown").text == str(expected))
    count = int(driver.find_element("id", "shown").text)
    assert count == len([c for c in driver.find_elements("css selector", "#cards > article") if c.is_displayed()])
    return count


def test_page_renders_cards_images_and_boxes_in_chromium(reference_run, browser):
    page, records = reference_run
    browser.get(page.as_uri())
    assert "pwned" not in browser.title  # the hostile question stayed text
    cards = browser.find_elements("css selector", "#cards > article")
    assert len(cards) == len(records) and shown(browser) == len(records)

    images = browser.execute_script(
        "return Array.from(document.querySelectorAll('#cards img')).map(i => [i.complete, i.naturalWidth]);")
    assert len(images) == 8  # --max-samples 8: the synthetic task's first 8; the toy task's files do not exist
    assert all(complete and width > 0 for complete, width in images)

    by_id = {r["id"]: r for r in records if r["task"] == "synthetic_small"}
    drawn = browser.execute_script("""
        return Array.from(document.querySelectorAll('#cards > article')).filter(c => c.querySelector('img'))
          .map(c => [c.querySelector('.sid').textContent, c.querySelectorAll('svg.boxes rect.box').length]);""")
    assert len(drawn) == 8 and sum(n for _, n in drawn) > 0
    for sample_id, count in drawn:
        assert count == expected_boxes(by_id[sample_id]), sample_id

    notices = browser.find_element("id", "notices").text
    assert "first 8 of 12 samples" in notices and "other 4 are listed without images" in notices
    toy = browser.find_elements("css selector", "article[data-task='toy_counting'] .noimg")
    assert toy and all("cannot read image file" in t.text for t in toy)
    question = browser.execute_script("""
        return Array.from(document.querySelectorAll("article[data-task='toy_counting']"))
          .find(c => c.querySelector('.sid').textContent === '0').querySelector('.q').textContent;""")
    assert question == HOSTILE_QUESTION


def test_filters_counts_and_url_hash_in_chromium(reference_run, browser):
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import Select

    page, records = reference_run
    browser.get("about:blank")
    browser.get(page.as_uri())
    Select(browser.find_element("id", "f-status")).select_by_value("system_error")
    assert shown(browser) == sum(r["status"] == "system_error" for r in records) == 5
    assert browser.current_url.endswith("#status=system_error")
    task_counts = [o.text for o in Select(browser.find_element("id", "f-task")).options]
    assert task_counts == ["all (5)", "synthetic_small (0)", "toy_counting (5)"]

    Select(browser.find_element("id", "f-status")).select_by_value("")
    box = browser.find_element("id", "f-text")
    box.send_keys("VQA(")
    matching = [r for r in records if "vqa(" in (r["question"] + "\n" + (r["program"] or "")).lower()]
    assert 0 < len(matching) < len(records)
    assert shown(browser) == len(matching)
    box.send_keys(Keys.BACKSPACE * 4)
    assert shown(browser) == len(records)

    # A linked view: a fresh load restores every filter from the hash.
    browser.get("about:blank")
    browser.get(page.as_uri() + "#task=synthetic_small&result=incorrect")
    wrong = [r for r in records if r["task"] == "synthetic_small" and r["scores"]["strict"] < 1]
    assert shown(browser) == len(wrong) > 0
    assert Select(browser.find_element("id", "f-result")).first_selected_option.get_attribute("value") == "incorrect"
    # A hash changed in place (a link within the page, or the back button) applies too.
    browser.execute_script("location.hash = 'status=system_error&q=picture%201'")
    expected = [r for r in records if r["status"] == "system_error" and "picture 1" in r["question"]]
    assert len(expected) == 2
    assert shown(browser, expected=2) == 2
    assert browser.find_element("id", "f-text").get_attribute("value") == "picture 1"


# --------------------------------------------------------------------------- without a browser

def test_hostile_text_is_escaped(reference_run):
    page, _ = reference_run
    text = page.read_text(encoding="utf-8")
    assert HOSTILE not in text and "onerror=\"document" not in text
    assert "&lt;/script&gt;&lt;script&gt;alert(1)&lt;/script&gt;" in text
    assert text.count("<script>") == 1  # only the page's own, which the content-security policy pins by hash
    assert re.search(r"script-src 'sha256-[A-Za-z0-9+/=]+'", text)
    assert "@@CARDS@@" in text  # a marker inside a record is shown, not filled


def test_boxes_are_scaled_to_the_thumbnail():
    thumb = make_thumbnail(Image.new("RGB", (640, 480), (10, 20, 30)))
    assert thumb.size == (384, 288) and thumb.original_size == (640, 480)
    assert scale_box((64, 48, 320, 240), (640, 480), (384, 288)) == pytest.approx((38.4, 28.8, 153.6, 115.2))
    assert scale_box((600, -20, 700, 100), (640, 480), (384, 288)) == pytest.approx((360, 0, 24, 60))  # clipped
    assert scale_box((700, 10, 800, 20), (640, 480), (384, 288)) is None  # wholly outside

    calls = [
        {"tool": "gd_detect", "args": ["<image>", "cube"], "result": [
            {"box": [64, 48, 320, 240], "label": "cube", "score": 0.9},
            {"box": [1, 2], "label": "bad"}]},
        {"tool": "gd_detect", "args": ["<image>", "cube"], "result": [{"box": [64, 48, 320, 240], "label": "cube"}]},
        {"tool": "gd_detect", "args": ["<image>", "cone"], "error": "boom"},
        {"tool": "depth", "args": ["<image>", [0, 0, 1, 1]], "result": 2.5},
    ]
    found, problems = detections(calls)
    assert found == [Detection("cube", (64.0, 48.0, 320.0, 240.0), 0.9)]  # the repeat is drawn once
    assert len(problems) == 1 and "detection 1" in problems[0] and "4 numbers" in problems[0]
    svg = _overlay(thumb, {"tool_calls": calls})
    assert re.findall(r'<rect class=box x="([\d.]+)" y="([\d.]+)" width="([\d.]+)" height="([\d.]+)"', svg) == [
        ("38.4", "28.8", "153.6", "115.2")]
    assert 'viewBox="0 0 384 288"' in svg


@pytest.fixture
def predictions_run(tmp_path):
    """A predictions run on the toy task, whose plan, program and detail are hostile too."""
    include, data = write_toy_task(tmp_path, n=6)
    preds = tmp_path / "preds.jsonl"
    preds.write_text("".join(json.dumps({"id": str(i), "prediction": i % 5, "plan": HOSTILE, "program": HOSTILE,
                                         "status": "ok" if i else "exception", "detail": HOSTILE}) + "\n"
                             for i in range(6)))
    out = tmp_path / "run"
    assert main(["run", "--system", "predictions", "--predictions", str(preds), "--tasks", "toy_counting",
                 "--data-dir", str(data), "--include-path", str(include), "--output-path", str(out)]) == 0
    return out


def test_a_run_whose_dataset_is_missing_still_gets_its_page(predictions_run, tmp_path, capsys):
    page = tmp_path / "elsewhere" / "page.html"
    assert main(["report", str(predictions_run), "--out", str(page), "--data-dir", str(tmp_path / "nothing")]) == 0
    assert "images of toy_counting not shown" in capsys.readouterr().err
    text = page.read_text(encoding="utf-8")
    assert text.count("Images of task toy_counting are not shown") == 1 and "toy/counting" in text
    assert "<img" not in text and "--data-dir" in text  # the reason says how to fix it
    assert text.count("<article") == 6 and HOSTILE not in text
    assert "<td>toy_counting</td><td>accuracy</td><td class=num>6</td>" in text  # the summary, from results.json


def test_malformed_records_are_shown_with_their_problem(predictions_run, tmp_path):
    samples = predictions_run / "samples_toy_counting.jsonl"
    bad_box = {"id": "7", "task": "toy_counting", "question": "q7", "status": "ok", "scores": {"strict": 1, "compat": 1},
               "tool_calls": [{"tool": "gd_detect", "args": ["<image>", "cube"], "result": [{"box": "wide"}]}]}
    with samples.open("a") as f:
        f.write("this is not json\n")
        f.write("[1, 2, 3]\n")
        f.write(json.dumps(bad_box) + "\n")
        f.write(json.dumps({"question": 5, "scores": "high"}) + "\n")
        f.write('{"id": "9", "quest')  # torn: the run was killed mid-write
    (predictions_run / "results.json").unlink()
    summary = write_report(predictions_run)
    assert summary.path == predictions_run / "report.html" and summary.cards == 6 + 5
    text = summary.path.read_text(encoding="utf-8")
    assert text.count("<article") == 11 and text.count("malformed record</span>") == 3
    assert "line 7" in text and "not JSON" in text and "this is not json" in text
    assert "line 8" in text and "expected a JSON object, got list" in text
    assert "line 11" in text and "cut off mid-write" in text
    assert "detection 0" in text and "4 numbers" in text  # the bad box, on a card that is otherwise whole
    assert "field &#x27;id&#x27; must be a string" in text and "field &#x27;scores&#x27;" in text
    assert "Summary computed from the records: the run has no results.json" in text
    assert re.search(r"<td>toy_counting</td><td>accuracy</td><td class=num>7</td>", text)  # 6 + the bad-box one


def test_report_refuses_a_folder_that_is_not_a_run(tmp_path, capsys):
    assert main(["report", str(tmp_path)]) == 2
    assert "is not a run directory" in capsys.readouterr().err


def test_a_large_report_is_pages_that_link_to_each_other(predictions_run, tmp_path, capsys):
    first = tmp_path / "pages" / "r.html"
    assert main(["report", str(predictions_run), "--out", str(first), "--page-size", "4", "--max-samples", "1"]) == 0
    assert "6 samples, on 2 pages" in capsys.readouterr().out
    pages = [first, tmp_path / "pages" / "r-2.html"]
    texts = [page.read_text(encoding="utf-8") for page in pages]
    assert [t.count("<article") for t in texts] == [4, 2]
    assert sorted(re.findall(r"<span class=sid[^>]*>(\d+)</span>", texts[0] + texts[1])) == [str(i) for i in range(6)]
    assert "Page 1 of 2: samples 1-4 of 6" in texts[0] and '<a href="r-2.html" rel=next>' in texts[0]
    assert "Page 2 of 2: samples 5-6 of 6" in texts[1] and '<a href="r.html" rel=prev>' in texts[1]
    for text in texts:  # every page has the summary and the notices of the whole run
        assert "<td>toy_counting</td><td>accuracy</td><td class=num>6</td>" in text
        assert "first 1 of 6 samples" in text
    assert main(["report", str(predictions_run), "--out", str(first), "--page-size", "0"]) == 2
    assert "--page-size must be at least 1" in capsys.readouterr().err
