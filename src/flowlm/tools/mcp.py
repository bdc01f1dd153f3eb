"""Tools from MCP servers (Model Context Protocol): any server a user runs becomes tools the model may call.

A tool entry `mcp:COMMAND` (`--tools 'calculator,mcp:python weather.py'`, `rollout.tools: ["mcp:..."]`,
`teacher.tools`) starts COMMAND as a stdio MCP server; `mcp:http://host/mcp` connects to a Streamable HTTP
one. Every tool the server lists (`tools/list`, all pages) is offered under its own name, with its input
schema as its parameters. A call is a `tools/call`, and the answer is the result's text content (other
content is named, `[image: image/png]`; a result with only structured content is its JSON). A result the
server marks as an error, a call past the timeout, or a server that died is an `error: ...` answer, as
for the built-in tools: a tool never raises on what the model wrote.

The protocol is the official SDK's (`mcp`, an optional dependency: `pip install 'flowlm[mcp]'`): its client
negotiates the version with each server, the 2026-07-28 revision or the older initialize handshake. The
tool loop is synchronous and runs calls in threads, so each server gets one asyncio loop in a thread of its
own, which owns the SDK client from connect to close, and calls are submitted to it. A server is
connected once per process and spec (`connect`); calls from many threads share it. Servers are closed at
exit, or by `close_all`.

A server command is the user's own program, run as the user (with their environment), like a reward model
server they started: it is not model output and does not run in the code sandbox. What the model sends it
is the arguments of a call, validated by the server against its schema.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import json
import os
import shlex
import threading
from typing import Any

from flowlm.errors import ConfigError, FlowError
from flowlm.tools.builtin import Tool

PREFIX = "mcp:"
CONNECT_TIMEOUT = 60.0
CALL_TIMEOUT = 60.0
_SERVERS: dict[str, MCPServer] = {}
_LOCK = threading.Lock()


def is_mcp(name: str) -> bool:
    return isinstance(name, str) and name.startswith(PREFIX)


def check_spec(name: str) -> str:
    """The server spec of a `mcp:` entry (a command or an http(s) URL); ValueError when there is none."""
    spec = name[len(PREFIX):].strip()
    if not spec:
        raise ValueError(f"{name!r}: give the server after 'mcp:' (a command, or an http(s):// URL)")
    if not spec.startswith(("http://", "https://")):
        try:
            if not shlex.split(spec):
                raise ValueError
        except ValueError:
            raise ValueError(f"{name!r}: the server command does not parse as a shell command line") from None
    return spec


def _text(result: Any) -> str:
    """A `tools/call` result as the text the model reads."""
    parts = []
    for block in result.content or []:
        kind = getattr(block, "type", "?")
        if kind == "text":
            parts.append(block.text)
        elif kind == "resource" and getattr(block.resource, "text", None) is not None:
            parts.append(block.resource.text)
        else:
            what = getattr(block, "mime_type", None) or getattr(block, "uri", None) or ""
            parts.append(f"[{kind}{': ' + str(what) if what else ''}]")
    text = "\n".join(parts)
    if not text and result.structured_content is not None:
        text = json.dumps(result.structured_content, ensure_ascii=False)
    return ("error: " + (text or "the tool failed")) if result.is_error else (text or "(no output)")


class MCPServer:
    """One connected MCP server: `tools` (its listing as flowlm `Tool`s) and `call(name, arguments) -> str`."""

    def __init__(self, spec: str, *, connect_timeout: float = CONNECT_TIMEOUT, call_timeout: float = CALL_TIMEOUT):
        try:
            from mcp import Client  # noqa: F401  # mcp >= 2 (1.x has no Client)
        except ImportError:
            raise FlowError("MCP tools need the 'mcp' package, version 2 or later: pip install 'flowlm[mcp]'") from None
        self.spec, self.call_timeout = spec, call_timeout
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name=f"flowlm-mcp {spec[:40]}", daemon=True)
        self._thread.start()
        self._client: Any = None
        self._closing: asyncio.Event | None = None
        ready: concurrent.futures.Future = concurrent.futures.Future()
        self._owner = asyncio.run_coroutine_threadsafe(self._own(ready), self._loop)
        try:
            listed = ready.result(timeout=connect_timeout)
        except concurrent.futures.TimeoutError:
            self.close()
            raise FlowError(f"MCP server {spec!r}: no tool listing within {connect_timeout:g} s") from None
        except Exception as exc:  # noqa: BLE001 - whatever the transport raised, one line naming the server
            self.close()
            raise FlowError(f"MCP server {spec!r}: cannot connect ({_reason(exc)})") from None
        self.tools = {t.name: Tool(t.name, t.description or "", dict(t.input_schema or {"type": "object"}),
                                   self._caller(t.name), strict=False) for t in listed}

    def _target(self) -> Any:
        from mcp import StdioServerParameters

        if self.spec.startswith(("http://", "https://")):
            return self.spec
        argv = shlex.split(self.spec)
        return StdioServerParameters(command=argv[0], args=argv[1:], env=dict(os.environ))

    async def _own(self, ready: concurrent.futures.Future) -> None:
        """Connect, list the tools, then hold the client open until `close` (the SDK's context must be
        entered and left by one task)."""
        from mcp import Client

        self._closing = asyncio.Event()
        try:
            async with Client(self._target(), read_timeout_seconds=self.call_timeout) as client:
                tools, cursor, seen = [], None, set()
                while True:  # every page (a server that repeats a cursor is not followed round)
                    page = await client.list_tools(cursor=cursor)
                    tools += page.tools
                    cursor = page.next_cursor
                    if not cursor or cursor in seen:
                        break
                    seen.add(cursor)
                self._client = client
                ready.set_result(tools)
                await self._closing.wait()
        except BaseException as exc:  # noqa: BLE001 - reported to the constructor, or ends the server
            self._client = None
            if not ready.done():
                ready.set_exception(exc if isinstance(exc, Exception) else RuntimeError(repr(exc)))
            if not isinstance(exc, Exception):  # cancelled by `close`: the task ends cancelled
                raise

    def _caller(self, name: str) -> Any:
        return lambda arguments: self.call(name, arguments)

    def call(self, name: str, arguments: dict[str, Any]) -> str:
        """The server's answer to one call, as text; `error: ...` when it failed, timed out or is gone."""
        if self._client is None:
            return f"error: the MCP server {self.spec!r} is not running"
        future = asyncio.run_coroutine_threadsafe(self._client.call_tool(name, arguments), self._loop)
        try:
            return _text(future.result(timeout=self.call_timeout + 5))
        except concurrent.futures.TimeoutError:
            future.cancel()
            return f"error: {name} timed out after {self.call_timeout:g} s"
        except Exception as exc:  # noqa: BLE001 - a protocol error (unknown tool, bad arguments) is an answer
            return f"error: {_reason(exc)}"

    def close(self) -> None:
        """Close the connection (a stdio server's process ends) and stop the loop's thread. A server still
        connecting (or hung) has its connection cancelled, which ends its process too."""
        if self._closing is not None:
            self._loop.call_soon_threadsafe(self._closing.set)
        if not concurrent.futures.wait([self._owner], timeout=5).done:
            self._owner.cancel()
            concurrent.futures.wait([self._owner], timeout=5)
        self._client = None
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)


def _reason(exc: BaseException) -> str:
    """A one-line reason from an exception (the SDK raises exception groups from its task groups)."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def connect(name: str) -> MCPServer:
    """The process's connection to the server of a `mcp:` entry (started on first use)."""
    try:
        spec = check_spec(name)
    except ValueError as exc:
        raise ConfigError(f"--tools: {exc}") from None
    with _LOCK:
        if spec not in _SERVERS:
            _SERVERS[spec] = MCPServer(spec)
        return _SERVERS[spec]


def disconnect(name: str) -> None:
    """Close the process's connection to the server of a `mcp:` entry, if it has one."""
    with _LOCK:
        server = _SERVERS.pop(check_spec(name), None)
    if server is not None:
        server.close()


def close_all() -> None:
    """Close every server this process connected to."""
    with _LOCK:
        servers = list(_SERVERS.values())
        _SERVERS.clear()
    for server in servers:
        server.close()


atexit.register(close_all)
