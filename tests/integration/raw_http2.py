"""A gRPC call written by hand over HTTP/2, for what grpc's own client refuses to send.

grpc's client validates metadata (no bytes outside printable ASCII in text headers) and always
frames a serialized message; an attacker's client does neither. This one sends any header bytes
and any body, and reads the status from the trailers.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import h2.config
import h2.connection
import h2.events

REPLY_TIMEOUT_SECONDS = 10.0


@dataclass
class RawReply:
    headers: dict[bytes, bytes] = field(default_factory=dict)  # response headers and trailers together
    body: bytes = b""

    @property
    def status(self) -> int:
        """The grpc-status code (a trailers-only answer carries it in the headers)."""
        return int(self.headers[b"grpc-status"])


async def call(port: int, method: str, body: bytes, metadata: tuple[tuple[bytes, bytes], ...] = ()) -> RawReply:
    """One unary call to `method` (e.g. "/keygate.v1.AuthzService/Check") with `body` as the message."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    config = h2.config.H2Configuration(client_side=True, header_encoding=None, validate_outbound_headers=False,
                                       normalize_outbound_headers=False, validate_inbound_headers=False)
    conn = h2.connection.H2Connection(config)
    conn.initiate_connection()
    stream = conn.get_next_available_stream_id()
    conn.send_headers(stream, [(b":method", b"POST"), (b":scheme", b"http"), (b":path", method.encode()),
                               (b":authority", b"127.0.0.1"), (b"content-type", b"application/grpc"),
                               (b"te", b"trailers"), *metadata])
    conn.send_data(stream, b"\0" + len(body).to_bytes(4, "big") + body, end_stream=True)
    writer.write(conn.data_to_send())
    reply = RawReply()
    try:
        async with asyncio.timeout(REPLY_TIMEOUT_SECONDS):
            while True:
                data = await reader.read(65536)
                if not data:
                    raise ConnectionError("the server closed the connection before the call ended")
                for event in conn.receive_data(data):
                    if isinstance(event, h2.events.ResponseReceived | h2.events.TrailersReceived):
                        reply.headers.update(dict(event.headers))
                    elif isinstance(event, h2.events.DataReceived):
                        reply.body += event.data
                        conn.acknowledge_received_data(event.flow_controlled_length, stream)
                    elif isinstance(event, h2.events.StreamEnded | h2.events.StreamReset):
                        return reply
                writer.write(conn.data_to_send())
    finally:
        writer.close()
        await writer.wait_closed()
