"""How notices reach clients besides the bus: RADIUS CoA (RFC 5176) and ICMP Echo."""
