"""Peers: paired daemons on the LAN, the links to them, and the routing that sends work where the model is."""
