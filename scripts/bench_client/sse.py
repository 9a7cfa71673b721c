"""Server-Sent-Events splitting on raw bytes, with no line-length limit.

aiohttp's line reader refuses lines over 64 KiB, and one completion event can
be longer than that (long texts, logprobs).
"""

from __future__ import annotations

import re

_SSE_EVENT_SEP = re.compile(rb"\r\n\r\n|\n\n|\r\r")
_SSE_LINE_SEP = re.compile(r"\r\n|\r|\n")


class SSEParser:
    """Incremental Server-Sent-Events splitter working on raw bytes.

    aiohttp's line reader refuses lines over 64 KiB, and a completion event
    can be longer than that (long texts, logprobs). This parser buffers bytes
    and cuts events on blank lines itself, with no size limit, and scans only
    the newly arrived bytes so a long event costs linear time.
    """

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, chunk: bytes) -> list[str]:
        """Add bytes; return the ``data`` payloads of all completed events."""
        buf = self._buf
        search_from = max(0, len(buf) - 3)  # a separator may straddle chunks
        buf.extend(chunk)
        out: list[str] = []
        pos = 0
        while True:
            m = _SSE_EVENT_SEP.search(buf, search_from)
            if m is None:
                break
            data = self._event_data(bytes(buf[pos : m.start()]))
            if data is not None:
                out.append(data)
            pos = search_from = m.end()
        if pos:
            del buf[:pos]
        return out

    def close(self) -> list[str]:
        """Flush an event the server did not terminate with a blank line."""
        data = self._event_data(bytes(self._buf))
        self._buf.clear()
        return [] if data is None else [data]

    @staticmethod
    def _event_data(raw: bytes) -> str | None:
        """Join the ``data:`` lines of one event; None for comments/empty.

        Lines are split only on CR/LF: str.splitlines would also split on
        U+2028 and friends, which may appear unescaped inside JSON strings.
        """
        if not raw.strip():
            return None
        data_lines = []
        for line in _SSE_LINE_SEP.split(raw.decode("utf-8", errors="replace")):
            if line.startswith("data:"):
                value = line[5:]
                data_lines.append(value.removeprefix(" "))
        if not data_lines:
            return None  # comment (": ping") or non-data fields only
        return "\n".join(data_lines)
