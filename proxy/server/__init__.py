"""The server side: uvicorn protocol with zero-copy file sends."""
