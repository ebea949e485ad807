"""A raw SMTP client for hostile-input tests: sends exact bytes, reads whole replies."""

from __future__ import annotations

import asyncio
import contextlib
import re
import ssl

# What no reply may carry: exception names, library or driver text, paths, tracebacks.
LEAK = re.compile(r"Traceback|Exception|[A-Za-z]+Error\b|Error:|errno|[Ss]qlite|SQLAlchemy|"
                  r"aiosmtpd|asyncio|[Pp]ython|File \"|/[a-z_]+/|0x[0-9a-f]{6,}")


def insecure_context() -> ssl.SSLContext:
    """A client context that accepts any certificate (a test server's self-signed one)."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


class RawSmtp:
    """One TCP connection; :meth:`send` writes bytes, :meth:`reply` reads one reply."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.replies: list[str] = []

    @classmethod
    async def connect(cls, port: int, host: str = "127.0.0.1") -> RawSmtp:
        reader, writer = await asyncio.open_connection(host, port, limit=1 << 20)
        return cls(reader, writer)

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def reply(self, timeout: float = 10.0) -> str:
        """The next reply, all of its lines joined with newlines; "" at EOF."""
        lines: list[str] = []
        while True:
            raw = await asyncio.wait_for(self.reader.readline(), timeout)
            if not raw:
                break
            line = raw.decode("ascii", "replace").rstrip("\r\n")
            lines.append(line)
            if len(line) < 4 or line[3] != "-":
                break
        text = "\n".join(lines)
        self.replies.append(text)
        return text

    async def cmd(self, data: bytes, timeout: float = 10.0) -> str:
        await self.send(data)
        return await self.reply(timeout)

    async def starttls(self, context: ssl.SSLContext | None = None,
                       server_hostname: str | None = None, timeout: float = 10.0) -> None:
        """Send ``STARTTLS``, expect ``220``, and run the TLS handshake (by default without
        verifying the server's certificate)."""
        reply = await self.cmd(b"STARTTLS\r\n", timeout)
        assert reply.startswith("220"), reply
        await asyncio.wait_for(self.writer.start_tls(context or insecure_context(),
                                                     server_hostname=server_hostname), timeout)

    async def closed(self, timeout: float = 5.0) -> bool:
        """True once the server has closed the connection (reads to EOF)."""
        try:
            while await asyncio.wait_for(self.reader.read(65536), timeout):
                pass
        except (TimeoutError, ConnectionError):
            return False
        return True

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(ConnectionError, OSError):
            await self.writer.wait_closed()
