"""Calls tools of an MCP server through the official Python SDK's stdio client.

Usage: mcp_client.py SPEC_JSON, where SPEC is
  {"command": "...", "args": [...], "calls": [{"tool": "add", "arguments": {...}}, ...],
   "repeat": 1}
Prints one JSON line per call: tool, ok, isError, text, errorCode, errorMessage, seconds
(the wall time of the call as the client saw it).
"""

import asyncio
import json
import sys
import time

from mcp import ClientSession, StdioServerParameters, types
from mcp.client.stdio import stdio_client
from mcp.shared.exceptions import McpError


async def main(spec):
    params = StdioServerParameters(command=spec["command"], args=spec["args"])
    info = types.Implementation(name="actseal-test-agent", version="0.9.1")
    async with stdio_client(params) as (read, write):
        async with ClientSession(read, write, client_info=info) as session:
            await session.initialize()
            await session.list_tools()
            for _ in range(spec.get("repeat", 1)):
                for call in spec["calls"]:
                    print(json.dumps(await one_call(session, call)), flush=True)


async def one_call(session, call):
    out = {"tool": call["tool"], "ok": False, "isError": None, "text": None,
           "errorCode": None, "errorMessage": None}
    start = time.perf_counter()
    try:
        result = await session.call_tool(call["tool"], call["arguments"])
        out["ok"] = True
        out["isError"] = bool(result.isError)
        out["text"] = "".join(c.text for c in result.content if c.type == "text")
    except McpError as e:
        out["errorCode"] = e.error.code
        out["errorMessage"] = e.error.message
    out["seconds"] = time.perf_counter() - start
    return out


if __name__ == "__main__":
    asyncio.run(main(json.loads(sys.argv[1])))
