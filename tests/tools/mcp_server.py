"""An MCP server for the tests, on the official SDK (`mcp.server.mcpserver.MCPServer`, stdio): what a
user's own server looks like. Tools: `add`, `weather` (text), `fails` (raises: an error result),
`count` (state kept across calls), `slow` (sleeps). `--only NAME` serves that tool alone."""

import sys
import time

from mcp.server.mcpserver import MCPServer

server = MCPServer("flowlm-test")
calls = {"n": 0}


@server.tool()
def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


@server.tool()
def weather(city: str) -> str:
    """The weather in a city."""
    return f"{city}: 18C, light rain"


@server.tool()
def fails(reason: str) -> str:
    """Always fails."""
    raise RuntimeError(f"it failed: {reason}")


@server.tool()
def count() -> str:
    """How many times this was called."""
    calls["n"] += 1
    return str(calls["n"])


@server.tool()
def slow(seconds: float) -> str:
    """Sleep, then answer."""
    time.sleep(seconds)
    return "done"


if __name__ == "__main__":
    if "--only" in sys.argv:
        keep = sys.argv[sys.argv.index("--only") + 1]
        for name in ("add", "weather", "fails", "count", "slow"):
            if name != keep:
                server.remove_tool(name)
    server.run()
