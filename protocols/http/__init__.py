"""The HTTP/REST frontend: KServe V2 plus Triton's extensions, on aiohttp."""
