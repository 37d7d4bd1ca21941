"""The coordinator's front ends: the gRPC Generator (servicer) and the OpenAI-compatible HTTP
API (openai_api, openai_schema, http_server). Each converts its requests to a
generation.core.GenerateArgs and the yielded tokens and stats back; no decoding here."""
