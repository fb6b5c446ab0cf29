"""The UDP endpoint every RADIUS socket is: each datagram handed on with its source."""

from __future__ import annotations

import asyncio

from services.radius.endpoint import Address, UdpEndpoint


async def test_a_datagrams_source_is_host_and_port_either_way() -> None:
    got: dict[str, tuple[bytes, Address]] = {}
    arrived = asyncio.Event()

    def keeper(kind: str) -> UdpEndpoint:
        def on_datagram(data: bytes, addr: Address) -> None:
            got[kind] = (data, addr)
            if len(got) == 2:
                arrived.set()

        return UdpEndpoint(on_datagram, name=kind, addresses_as_given=kind == "given")

    normal = await keeper("normal").open(local_addr=("127.0.0.1", 0))
    given = await keeper("given").open(local_addr=("127.0.0.1", 0))
    sender = await UdpEndpoint(lambda data, addr: None, name="sender").open(
        local_addr=("127.0.0.1", 0)
    )
    source = sender.address
    try:
        for endpoint in (normal, given):
            assert endpoint.address is not None
            sender.sendto(b"hello", endpoint.address)
        await asyncio.wait_for(arrived.wait(), 5.0)
    finally:
        for endpoint in (normal, given, sender):
            endpoint.close()
    assert got["normal"] == got["given"] == (b"hello", source)
    host, port = got["given"][1]
    assert isinstance(host, str) and isinstance(port, int)
