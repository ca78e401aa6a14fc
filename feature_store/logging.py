"""Structured logging for every featurestream process, with secrets redacted.

`configure_logging(settings)` is called once at process start (CLI, worker,
server). structlog events and plain stdlib `logging` records (faust, aiokafka,
uvicorn) go through the same chain and the same redaction, then out as JSON
lines or console text on stderr.

Redaction: values under keys whose name contains key, secret, password,
passwd, token, authorization or credential become `***` (numbers and booleans
excepted: counts are not secrets); in every string, URL passwords
(`redis://:pw@host` -> `redis://:***@host`) and bearer tokens are masked.
So log an entity key as `entity=...`, not `key=...`.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Mapping
from typing import IO, TYPE_CHECKING, Any

import structlog
from pydantic import SecretBytes, SecretStr

if TYPE_CHECKING:
    from structlog.typing import EventDict, Processor, WrappedLogger

    from feature_store.settings import Settings

__all__ = ["REDACTED", "configure_logging", "redact", "redact_text"]

REDACTED = "***"
_SECRET_NAME = re.compile(r"key|secret|passw(or)?d|token|authorization|credential", re.IGNORECASE)
# scheme://[user]:PASSWORD@ ; a host:port without "@" never matches.
_URL_PASSWORD = re.compile(r"(\b[a-zA-Z][a-zA-Z0-9+.-]*://[^:/@\s]*:)[^@/\s]+(?=@)")
_BEARER = re.compile(r"\b(bearer\s+)[^\s\"',;]+", re.IGNORECASE)
_HANDLER_MARK = "_featurestream_handler"


def redact_text(text: str) -> str:
    """Mask URL passwords and bearer tokens inside free text."""
    return _BEARER.sub(rf"\1{REDACTED}", _URL_PASSWORD.sub(rf"\1{REDACTED}", text))


def redact(value: Any, name: str = "") -> Any:
    """Return `value` with secrets masked; `name` is the key it was logged under."""
    if isinstance(value, bool | int | float) or value is None:
        return value
    if name and _SECRET_NAME.search(name):
        return REDACTED
    if isinstance(value, SecretStr | SecretBytes):
        return REDACTED
    if isinstance(value, str):
        return redact_text(value)
    if isinstance(value, Mapping):
        return {k: redact(v, str(k)) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [redact(v) for v in value]
    return value


def _redact_processor(_logger: WrappedLogger, _method: str, event_dict: EventDict) -> EventDict:
    for name, value in list(event_dict.items()):
        if name.startswith("_"):  # structlog internals (_record, _from_structlog)
            continue
        event_dict[name] = redact(value, "" if name == "event" else name)
    return event_dict


def configure_logging(settings: Settings, *, stream: IO[str] | None = None) -> None:
    """Route structlog and stdlib logging through one redacting chain to `stream` (stderr).

    Safe to call again (tests do): it replaces the handler it installed before.
    """
    level = logging.getLevelNamesMapping()[settings.log_level]
    out = stream if stream is not None else sys.stderr
    shared: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_logger_name,
        structlog.stdlib.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.StackInfoRenderer(),
        structlog.processors.format_exc_info,  # before redaction: tracebacks hold URLs too
        _redact_processor,
    ]
    renderer: Processor = (
        structlog.processors.JSONRenderer() if settings.log_json else structlog.dev.ConsoleRenderer(colors=out.isatty())
    )
    structlog.configure(
        processors=[
            structlog.stdlib.filter_by_level,
            *shared,
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=False,  # so a later configure() or capture_logs() applies
    )
    handler = logging.StreamHandler(out)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=shared,
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
        )
    )
    setattr(handler, _HANDLER_MARK, True)
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, _HANDLER_MARK, False)]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
