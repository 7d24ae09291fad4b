"""The detector answers each request as if alone: batching, long phrase lists, errors, the original predict."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("torch")
pytest.importorskip("transformers")

from harness.tools import ToolContext, make_backend  # noqa: E402
from harness.tools.detector import DetectorInputError, GroundingDinoDetector, original_caption  # noqa: E402
from harness.types import BytesImage  # noqa: E402
from tiny_models import WORDS, save_grounding_dino  # noqa: E402

PHRASES = ["red cube", "blue ball", "green cone", "a dog", "the chair", "yellow mug", "purple box",
           "orange sphere", "a cat", "the table", "red car", "blue chair"]  # 38 caption tokens: over the tiny 32


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> str:
    return str(save_grounding_dino(tmp_path_factory.mktemp("detector") / "gdino"))


def noise(height: int, width: int, seed: int) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 255, (height, width, 3), dtype=np.uint8))


def detector(checkpoint: str, **settings) -> GroundingDinoDetector:
    return GroundingDinoDetector(checkpoint=checkpoint, device="cpu", **{
        "box_threshold": 0.0, "text_threshold": 0.0, "label_match": "span", **settings})


def test_a_detection_never_depends_on_the_other_requests_of_its_batch(checkpoint):
    """Images of other sizes and captions of other lengths in one call change nothing; requests of
    the same shapes share one forward pass and agree with each alone within float noise."""
    gd = detector(checkpoint)
    requests = [(noise(120, 160, 0), ["red cube", "blue ball"]), (noise(200, 100, 1), ["cat"]),
                (noise(120, 160, 2), ["red cube", "blue ball"]), (noise(90, 300, 3), ["green cone", "a dog"]),
                (noise(120, 160, 4), ["the chair", "red car"])]
    alone = [gd.query_scores([request])[0] for request in requests]
    together = gd.query_scores(requests)
    for (boxes, scores), (want_boxes, want_scores) in zip(together, alone):
        np.testing.assert_allclose(scores, want_scores, rtol=0, atol=1e-5)
        np.testing.assert_allclose(boxes, want_boxes, rtol=0, atol=1e-3)  # pixels
    single = [(image, [phrases[0].split()[-1]]) for image, phrases in requests]  # one word: span-matchable
    found = gd.detect_batch(single)
    assert all(found)
    for detections, request in zip(found, single):
        want = gd.detect_batch([request])[0]
        assert [d["label"] for d in detections] == [d["label"] for d in want]
        np.testing.assert_allclose([d["box"] for d in detections], [d["box"] for d in want], atol=0.02)

    # Padded into one batch, the same request would have read the other image's padding.
    import torch

    image = requests[1][0]
    padded = gd._processor(images=[image, requests[0][0]], text=["cat.", "red cube. blue ball."],
                           return_tensors="pt", padding=True)
    with torch.inference_mode():
        padded_probs = torch.sigmoid(gd._model(**padded).logits[0]).numpy()
    own = gd.run([(image, "cat.")])[0][0]
    assert np.abs(padded_probs - own).max() > 1e-2


def test_long_phrase_lists_are_split_into_captions_that_fit(checkpoint):
    gd = detector(checkpoint)
    chunks = gd.phrase_chunks(PHRASES)
    assert [i for chunk in chunks for i in chunk] == list(range(len(PHRASES))) and len(chunks) == 2
    assert all(sum(gd.phrase_length(PHRASES[i]) for i in chunk) + 2 <= gd.max_text_len for chunk in chunks)
    image = noise(120, 160, 5)
    exact = detector(checkpoint, box_threshold=0.3, text_threshold=0.25, label_match="exact")
    found = exact.detect_batch([(image, PHRASES)])[0]
    parts = [exact.detect_batch([(image, [PHRASES[i] for i in chunk])])[0] for chunk in chunks]
    assert found == sorted(parts[0] + parts[1], key=lambda d: -d["score"])
    assert {d["label"] for d in found} <= set(PHRASES)
    boxes, scores = gd.query_scores([(image, PHRASES)])[0]
    assert boxes.shape == (2 * 20, 4) and scores.shape == (2 * 20, len(PHRASES))
    assert not scores[:20, chunks[1]].any() and not scores[20:, chunks[0]].any()


def test_one_requests_error_stays_with_it(checkpoint):
    gd = detector(checkpoint)
    too_long = " ".join(["red"] * 40)
    with pytest.raises(DetectorInputError, match="takes 41 text tokens"):
        gd.detect_batch([(noise(50, 60, 0), ["cat"]), (noise(50, 60, 1), [too_long])])
    results = gd.detect_batch([(noise(50, 60, 0), ["cat"]), (noise(50, 60, 1), [too_long])], errors="return")
    assert isinstance(results[1], DetectorInputError) and results[0] == gd.detect_batch([(noise(50, 60, 0), ["cat"])])[0]

    # Through the tool server: two programs' calls in one micro-batch, one of them bad.
    backend = make_backend("real", device="cpu", cache=False, max_batch=8, max_wait_ms=200,
                           detector={"checkpoint": checkpoint, "box_threshold": 0.0, "text_threshold": 0.0,
                                     "label_match": "span"})
    import io

    def context(seed: int) -> ToolContext:
        buffer = io.BytesIO()
        noise(50, 60, seed).save(buffer, "PNG")
        return ToolContext(BytesImage(buffer.getvalue()), (60, 50))

    outcomes: dict[str, object] = {}

    def call(name: str, phrases: list[str], seed: int) -> None:
        try:
            outcomes[name] = backend.gd_detect(context(seed), phrases)
        except Exception as exc:  # noqa: BLE001 - the outcome under test
            outcomes[name] = exc

    backend.detector._load()
    threads = [threading.Thread(target=call, args=("good", ["cat"], 0)),
               threading.Thread(target=call, args=("bad", [too_long], 1))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    backend.close()
    assert isinstance(outcomes["bad"], DetectorInputError)
    assert outcomes["good"] == results[0]


def test_original_predictions_decode_the_tokens_above_the_text_threshold(checkpoint):
    gd = detector(checkpoint, box_threshold=0.35, text_threshold=0.25)
    gd._load()
    assert original_caption("  Red Cube . Ball") == "red cube . ball ."
    assert original_caption("cat.") == "cat."
    caption = original_caption("red cube . ball")  # [CLS] red cube . ball . [SEP]
    probs = np.zeros((4, 32), dtype=np.float32)
    probs[0, [1, 2, 3]] = 0.9       # "red cube ." -> the period removed
    probs[1, [0, 4]] = [0.99, 0.5]  # [CLS] never named; the box scores its best token, [CLS] included
    probs[2, [2, 6]] = 0.6          # [SEP] is decoded as the original decodes it
    probs[3, [1]] = 0.3             # below the box threshold: not kept
    boxes = np.array([[0.5, 0.5, 0.2, 0.2], [0.1, 0.1, 0.1, 0.1], [0.9, 0.9, 0.4, 0.4], [0.5, 0.5, 0.1, 0.1]])
    found = gd._original_boxes(probs, boxes, (100, 50), caption)
    assert [(d["phrase"], round(d["score"], 2)) for d in found] == [("red cube", 0.9), ("ball", 0.99),
                                                                    ("cube [SEP]", 0.6)]
    assert found[0]["box"] == pytest.approx([40.0, 20.0, 60.0, 30.0])
    assert found[2]["box"] == pytest.approx([70.0, 35.0, 100.0, 50.0])  # clipped to the image
    assert found[2]["cxcywh"] == pytest.approx([0.9, 0.9, 0.4, 0.4])    # as the model gave it

    # The real path: every kept box has a decoded phrase of caption words, whatever the batch.
    image = noise(120, 160, 7)
    alone = gd.original_predictions([(image, "red cube . ball")])[0]
    together = gd.original_predictions([(noise(60, 60, 8), "cat"), (image, "red cube . ball")])[1]
    assert alone == together and alone
    for d in alone:
        assert set(d["phrase"].split()) <= set(WORDS) | {"[SEP]"}
    # A caption longer than the text length is cut, as the original cuts it, not refused.
    assert isinstance(gd.original_predictions([(image, " . ".join(PHRASES))])[0], list)


def test_the_paper_gd_detect_reads_the_original_predict_through_the_tool_server(checkpoint):
    """The paper protocol's gd_detect with the real detector: the caption as the original built it,
    the original predict's phrases and boxes, shaped as the original returned them."""
    import io

    from harness.tools.paper_api import PAPER_BOX_THRESHOLD, PAPER_TEXT_THRESHOLD, PaperToolSession, shape_detections

    image = noise(50, 60, 3)
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    context = ToolContext(BytesImage(buffer.getvalue()), (60, 50))
    backend = make_backend("real", device="cpu", cache=False, detector={"checkpoint": checkpoint})
    try:
        gd = backend.detector
        low = backend.detect_caption(context, "red-cube . dog", 0.0, 0.0)  # every query passes at 0
        assert low and all(len(box) == 4 and isinstance(phrase, str) for box, phrase in low)
        expected = gd.original_predictions([(image, "red-cube . dog")], box_threshold=0.0, text_threshold=0.0)[0]
        assert low == [(d["cxcywh"], d["phrase"]) for d in expected]
        session = PaperToolSession(backend, context, "image.png", texts=None)
        found = session.call("gd_detect", ["image.png", "red cube, dog"], {})
        raw = backend.detect_caption(context, "red-cube . dog", PAPER_BOX_THRESHOLD, PAPER_TEXT_THRESHOLD)
        assert found == shape_detections(raw, ["red-cube", "dog"], (60, 50))
        assert all(isinstance(v, int) for d in found for v in d["bbox"])
    finally:
        backend.close()
