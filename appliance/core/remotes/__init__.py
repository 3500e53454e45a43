"""Registries: references, hosts (certs.d), authentication and a v2 client."""
