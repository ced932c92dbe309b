"""Step 3: admission. What may stop a resolved request before any upstream call."""

from __future__ import annotations

from panel.errors import InvalidRequest

from .resolve import Resolution


async def admit(*, resolution: Resolution, body: dict) -> None:
    """Check the request's own bounds against the model; raise to refuse it."""
    max_tokens = body.get("max_tokens", body.get("max_completion_tokens"))
    if max_tokens is not None and (
        isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1
    ):
        raise InvalidRequest("max_tokens must be a positive integer.", param="max_tokens")
    limit = resolution.model.max_output_tokens
    if max_tokens is not None and limit and max_tokens > limit:
        raise InvalidRequest(
            f"max_tokens is {max_tokens}, above this model's limit of {limit}.",
            param="max_tokens",
        )
