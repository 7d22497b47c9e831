"""An MCP server written with the official Python SDK's FastMCP, on the stdio transport.

tests/mcp_proxy.rs starts it behind `actseal mcp-proxy` (and directly, to compare).
"""

from mcp.server.fastmcp import FastMCP

server = FastMCP("actseal-test-server")


@server.tool()
def add(a: int, b: int) -> int:
    """Adds two integers."""
    return a + b


@server.tool()
def echo(text: str) -> str:
    """Returns its text unchanged."""
    return text


@server.tool()
def fail(reason: str) -> str:
    """Always fails (the SDK answers a result with isError)."""
    raise ValueError(reason)


if __name__ == "__main__":
    server.run("stdio")
