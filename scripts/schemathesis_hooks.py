"""Schemathesis checks of our own, loaded by scripts/fuzz-api (SCHEMATHESIS_HOOKS)."""

import json

import schemathesis


@schemathesis.check
def error_body_is_json_error(ctx, response, case):
    """Every error answer (4xx, 5xx) is JSON {"error": "<a non-empty message>"}."""
    if response.status_code < 400:
        return None
    content_type = (response.headers.get("content-type") or [""])[0]
    if content_type.split(";")[0].strip().lower() != "application/json":
        raise AssertionError(
            f"error {response.status_code} has Content-Type {content_type!r}, not application/json"
        )
    try:
        body = json.loads(response.content)
    except ValueError as error:
        raise AssertionError(f"error {response.status_code} is not JSON: {error}") from error
    if not isinstance(body, dict) or not isinstance(body.get("error"), str) or not body["error"]:
        raise AssertionError(f'error {response.status_code} is not {{"error": "..."}}: {body!r}')
    return None
