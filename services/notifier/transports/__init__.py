"""How the notifier carries a notice to a client: one object per transport, one protocol.

:mod:`~services.notifier.transports.protocol` says what every transport
does (:class:`~services.notifier.transports.protocol.Transport`) and what it
tells the notifier back (:class:`~services.notifier.transports.protocol.Deliveries`);
:mod:`~services.notifier.transports.bus`, :mod:`~services.notifier.transports.coa`
and :mod:`~services.notifier.transports.icmp` are the three transports a
client's ``transport`` names. The wire format they share with the agent is
:mod:`services.radius.notice`.
"""
