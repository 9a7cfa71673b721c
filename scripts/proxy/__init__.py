"""Parts of the P/D proxy; the entry point is ../disagg_proxy_server.py (docs/node-programs.md)."""
