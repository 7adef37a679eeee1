"""A websocket client that reads its socket only when told to: a stalled reader, for real.

websockets' asyncio client keeps reading the socket into its own buffers while the application
does not call `recv`, so it never stalls a server by much. This one speaks the same protocol
through websockets' sans-I/O `ClientProtocol` on a plain socket with a small receive buffer: while
nobody calls `recv`, nothing is read, the TCP window closes and the server's sends back up.
"""

from __future__ import annotations

import asyncio
import json
import socket
from collections import deque
from typing import Any

from websockets.client import ClientProtocol
from websockets.frames import Opcode
from websockets.http11 import Response
from websockets.typing import Subprotocol
from websockets.uri import parse_uri

from tests.support.client import Subscriber


class StalledSocket:
    """`send`/`recv` of text messages, the two methods `tests.support.client.Subscriber` uses."""

    def __init__(self, sock: socket.socket, protocol: ClientProtocol) -> None:
        self.sock = sock
        self.protocol = protocol
        self.loop = asyncio.get_running_loop()
        self.messages: deque[str] = deque()

    @classmethod
    async def connect(cls, ws_url: str, *, receive_buffer: int = 4096) -> StalledSocket:
        uri = parse_uri(ws_url)
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)  # before connect: sets the window
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, (uri.host, uri.port))
        client = cls(sock, ClientProtocol(uri, subprotocols=[Subprotocol("graphql-transport-ws")]))
        client.protocol.send_request(client.protocol.connect())
        await client._flush()
        while True:
            events = await client._read()
            if any(isinstance(event, Response) for event in events):
                break
        if client.protocol.handshake_exc is not None:
            raise client.protocol.handshake_exc
        return client

    async def send(self, text: str) -> None:
        self.protocol.send_text(text.encode())
        await self._flush()

    async def recv(self) -> str:
        while not self.messages:
            await self._read()
        return self.messages.popleft()

    def close(self) -> None:
        self.sock.close()

    async def _read(self) -> list[Any]:
        data = await self.loop.sock_recv(self.sock, 65536)
        if not data:
            close = self.protocol.close_rcvd
            raise ConnectionError(f"the server closed the connection ({close or 'no close frame'})")
        self.protocol.receive_data(data)
        events = self.protocol.events_received()
        for event in events:
            if getattr(event, "opcode", None) is Opcode.TEXT:
                self.messages.append(event.data.decode())
        await self._flush()  # pongs the protocol queued for the server's pings
        return events

    async def _flush(self) -> None:
        for data in self.protocol.data_to_send():
            if data:
                await self.loop.sock_sendall(self.sock, data)


async def stalled_subscriber(ws_url: str, token: str) -> tuple[StalledSocket, Subscriber]:
    """A connected, acknowledged graphql-transport-ws client that reads only in `recv`."""
    connection = await StalledSocket.connect(ws_url)
    await connection.send(json.dumps({"type": "connection_init", "payload": {"authorization": f"Bearer {token}"}}))
    ack = json.loads(await connection.recv())
    assert ack["type"] == "connection_ack", ack
    return connection, Subscriber(connection)
