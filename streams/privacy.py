"""What a rejected event keeps of its user: the dead-letter copy and the stored reason, redacted.

A dead letter exists so that someone can see why an event was refused and fix the producer, not to export
prompts or raw user ids. So the copy of an event whose value parses as a JSON object drops ``text`` and carries
the pseudonym of ``user_id`` (re-serialized as JSON; header ``guardstream.redacted`` names the fields), fields the
contract does not define keep their name but not their value (a producer's own ``prompt`` or ``messages`` would
carry prompt text under another name; the name alone still shows a misnamed field), and its
record key, which producers set to the raw user id, becomes the pseudonym of the key (header
``guardstream.key_pseudonymized``), the same pseudonym the store holds for that user. Only bytes that do not parse
(not JSON, not UTF-8, or over the decoder's size limit, which is never parsed) travel as they came. With
``--allow-raw-user-ids`` (no pseudonym key) ids stay raw but ``text`` is still dropped: prompt text is never
exported. The reason text (a header, and the ``dead_letters`` table) is scrubbed of the raw id and text too.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from typing import Any

from detectors.events import MAX_EVENT_BYTES, Decision, pseudonymize

# comma-separated: text (dropped), user_id (replaced by its pseudonym), unknown_fields (values of fields the
# contract does not define replaced by null)
REDACTED_HEADER = "guardstream.redacted"
CONTRACT_FIELDS = frozenset(Decision.__struct_fields__)
KEY_HEADER = "guardstream.key_pseudonymized"  # "true": the record key is the pseudonym of the original key
UTF8_BOM = b"\xef\xbb\xbf"
_MIN_BARE = 8  # shorter raw values are replaced only where quoted (bare, they would hit ordinary words)


def pseudonymize_key(key: bytes, pseudonym_key: bytes) -> bytes:
    """The pseudonym of a record key: for a UTF-8 key exactly the stored user id's (producers key by user_id)."""
    try:
        return pseudonymize(key.decode("utf-8"), pseudonym_key).encode()
    except UnicodeDecodeError:
        return ("p-" + hmac.new(pseudonym_key, key, hashlib.sha256).hexdigest()[:24]).encode()


def parse_object(value: bytes | None) -> dict[str, Any] | None:
    """The event as a JSON object, or None when the bytes are not one (those travel as they came).

    The standard library's parser: unlike orjson it keeps integers past 64 bits exact (orjson makes them floats)
    and reads the NaN and Infinity some producers write, so the copy differs from the original only where it is
    redacted. Strict UTF-8 (a UTF-16 body is undecodable, not re-encoded); a UTF-8 byte order mark is skipped."""
    if not value or len(value) > MAX_EVENT_BYTES:
        return None
    try:
        parsed = json.loads(value.removeprefix(UTF8_BOM).decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        return None
    return parsed if isinstance(parsed, dict) else None


def _dumps(event: dict[str, Any]) -> bytes:
    try:
        return json.dumps(event, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate from a JSON escape: written back as the escape
        return json.dumps(event, separators=(",", ":")).encode("ascii")


def _id_text(value: Any) -> str:
    """A user_id as the text it is pseudonymized from (a producer may send a number or worse)."""
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True, separators=(",", ":"))


def _pseudonym(value: Any, pseudonym_key: bytes) -> str:
    text = _id_text(value)
    try:
        return pseudonymize(text, pseudonym_key)
    except UnicodeEncodeError:  # a lone surrogate from a JSON escape: no UTF-8 text, but still a stable pseudonym
        return pseudonymize_key(text.encode("utf-8", "surrogatepass"), pseudonym_key).decode()


def dead_letter_copy(
    key: bytes | None, value: bytes | None, pseudonym_key: bytes | None
) -> tuple[bytes | None, bytes | None, list[tuple[str, bytes]]]:
    """The key, value and extra headers of the dead-letter record of a rejected message."""
    headers: list[tuple[str, bytes]] = []
    if key and pseudonym_key is not None:
        key = pseudonymize_key(key, pseudonym_key)
        headers.append((KEY_HEADER, b"true"))
    event = parse_object(value)
    if event is None:
        return key, value, headers
    redacted = []
    if "text" in event:
        del event["text"]
        redacted.append("text")
    if "user_id" in event and pseudonym_key is not None:
        event["user_id"] = _pseudonym(event["user_id"], pseudonym_key)
        redacted.append("user_id")
    unknown = [name for name, value in event.items() if name not in CONTRACT_FIELDS and value is not None]
    if unknown:
        event.update(dict.fromkeys(unknown))
        redacted.append("unknown_fields")
    if not redacted:
        return key, value, headers
    value = _dumps(event)
    headers.append((REDACTED_HEADER, ",".join(redacted).encode()))
    return key, value, headers


def redact_detail(detail: str, value: bytes | None, pseudonym_key: bytes | None) -> str:
    """A rejection's reason without the event's raw user id or text, should a check have quoted them."""
    event = parse_object(value)
    if event is None:
        return detail
    replacements: list[tuple[Any, str]] = [(event.get("text"), "<text>")]
    if pseudonym_key is not None and "user_id" in event:
        replacements.append((event["user_id"], _pseudonym(event["user_id"], pseudonym_key)))
    for raw, instead in replacements:
        if raw is None or raw == "":
            continue
        text = _id_text(raw)
        forms = {repr(text), json.dumps(text), json.dumps(text, ensure_ascii=False)}
        if len(text) >= _MIN_BARE:
            forms.add(text)
        for form in sorted(forms, key=len, reverse=True):  # quoted forms first: they contain the bare one
            if form in detail:
                detail = detail.replace(form, instead)
    return detail
