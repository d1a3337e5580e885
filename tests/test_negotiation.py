"""Accept parsing and the raw-bytes-or-JSON choice for finished jobs."""

import pytest

from kiapi_core.http.negotiation import choose, parse_accept, quality


def test_parse_accept_reads_q_values_and_skips_garbage():
    ranges = parse_accept("image/png;q=0.5, application/json , garbage, */*;q=0.1;level=1, text/x;q=abc")
    assert [(r.type, r.subtype, r.q) for r in ranges] == [
        ("image", "png", 0.5), ("application", "json", 1.0), ("*", "*", 0.1), ("text", "x", 0.0)]


def test_most_specific_range_decides_quality():
    ranges = parse_accept("image/*;q=0.3, image/png;q=0.9, */*;q=0.1")
    assert quality(ranges, "image/png") == (0.9, 3)
    assert quality(ranges, "image/webp") == (0.3, 2)
    assert quality(ranges, "application/json") == (0.1, 1)


@pytest.mark.parametrize(
    ("accept", "artifact", "expected"),
    [
        (None, "image/png", "raw"),
        ("", "image/png", "raw"),
        ("*/*", "image/png", "raw"),
        ("image/*", "image/png", "raw"),
        ("image/png", "image/png", "raw"),
        ("application/json", "image/png", "json"),
        ("application/json, */*", "image/png", "json"),
        ("application/json, image/png", "image/png", "json"),
        ("application/json;q=0.5, image/png", "image/png", "raw"),
        ("application/json;q=0, */*", "image/png", "raw"),
        ("image/png;q=0, application/*", "image/png", "json"),
        ("text/html", "image/png", None),
        ("image/jpeg", "image/png", None),
        ("application/json", None, "json"),
        ("*/*", None, "json"),
        ("image/png", None, None),
    ],
)
def test_choose(accept, artifact, expected):
    assert choose(accept, artifact) == expected
