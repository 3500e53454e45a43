"""One module per plugin family: registrations, local service and thin gRPC adapter."""
