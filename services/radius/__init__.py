"""RADIUS as both sides of aaa-failover speak it, in one package beside the services.

- :mod:`services.radius.packet`: the project's dictionary, packet codes,
  requests built and replies verified, and :class:`~services.radius.packet.Dropped`.
- :mod:`services.radius.reencode`: a proxied packet's crypto: User-Password
  and salt-encrypted attributes carried from one shared secret to another.
- :mod:`services.radius.client`: :class:`~services.radius.client.RadiusClient`,
  requests to one server matched by id, with timeouts.
- :mod:`services.radius.notice`: the wire format of a notice outside the bus
  (CoA attributes, RFC 5080 back-off, the ICMP Echo frame).
- :mod:`services.radius.icmp`: ICMP Echo messages and raw sockets.
- :mod:`services.radius.endpoint`: the one UDP endpoint helper every RADIUS
  socket here is opened with.
- ``dictionary``: the RADIUS dictionary (FreeRADIUS statistics, vendor
  ``aaa-failover``).
"""
