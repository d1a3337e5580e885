"""Content negotiation for job results: raw artifact bytes or the Job JSON.

The Accept header is parsed properly (media ranges, q-values, specificity, RFC 9110 §12.5.1).
A sync job with exactly one artifact answers with its bytes unless the client prefers JSON;
when JSON and the artifact are equally acceptable, an explicit ``application/json`` wins over
a wildcard (so ``Accept: application/json, */*`` gets JSON) and a bare ``*/*`` gets bytes
(so ``curl -o out.png`` just works).
"""

from __future__ import annotations

from typing import Literal, NamedTuple

JSON = "application/json"


class MediaRange(NamedTuple):
    type: str
    subtype: str
    q: float

    def match(self, media_type: str) -> int:
        """Specificity of the match (3 exact, 2 type/*, 1 */*), 0 for no match."""
        kind, _, sub = media_type.partition("/")
        if self.type == "*" and self.subtype == "*":
            return 1
        if self.type != kind:
            return 0
        if self.subtype == "*":
            return 2
        return 3 if self.subtype == sub else 0


def parse_accept(header: str | None) -> list[MediaRange]:
    """Media ranges of an Accept header; malformed members are skipped, q clamped to [0, 1]."""
    ranges: list[MediaRange] = []
    for member in (header or "").split(","):
        parts = [p.strip() for p in member.split(";")]
        media = parts[0].lower()
        if "/" not in media:
            continue
        kind, _, sub = media.partition("/")
        q = 1.0
        for param in parts[1:]:
            name, _, value = param.partition("=")
            if name.strip().lower() == "q":
                try:
                    q = min(1.0, max(0.0, float(value)))
                except ValueError:
                    q = 0.0
        ranges.append(MediaRange(kind, sub, q))
    return ranges


def quality(ranges: list[MediaRange], media_type: str) -> tuple[float, int]:
    """(q, specificity) of ``media_type`` under the most specific matching range."""
    best: tuple[int, float] = (0, 0.0)
    for r in ranges:
        s = r.match(media_type.lower())
        if s > best[0]:
            best = (s, r.q)
    return best[1], best[0]


def choose(accept: str | None, artifact_type: str | None) -> Literal["raw", "json"] | None:
    """Pick the representation of a finished job; ``None`` means nothing acceptable (406).

    ``artifact_type`` is the single artifact's media type, or ``None`` when the job does not
    have exactly one artifact (then only JSON is possible).
    """
    if not accept or not accept.strip():
        return "raw" if artifact_type else "json"
    ranges = parse_accept(accept)
    if not ranges:
        return "raw" if artifact_type else "json"
    json_q, json_s = quality(ranges, JSON)
    if artifact_type is None:
        return "json" if json_q > 0 else None
    raw_q, raw_s = quality(ranges, artifact_type)
    if json_q <= 0 and raw_q <= 0:
        return None
    if json_q != raw_q:
        return "json" if json_q > raw_q else "raw"
    if json_s != raw_s:
        return "json" if json_s > raw_s else "raw"
    return "json" if json_s == 3 else "raw"

