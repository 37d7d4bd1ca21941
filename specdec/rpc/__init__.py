"""gRPC plumbing shared by the three servers: status mapping, server start-up, health."""
