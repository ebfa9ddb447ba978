"""The load generator shared by `printctl loadtest` and the benchmarks (benchmarks/loadclient.py).

| module | what |
| --- | --- |
| `frames` | WebSocket client framing, permessage-deflate, the upgrade request: bytes only |
| `target` | the URL a run loads (one printd or a front), resolved once |
| `client` | many WebSocket connections on non-blocking sockets in one epoll loop per process |
| `payloads` | status bodies that compress like real ones |
| `stats` | HdrHistograms (encoded between processes, merged exactly), the process's CPU |
| `workers` | a coordinator and its worker processes, talking in JSON lines |

Nothing here imports trio: the generator is a plain epoll loop, so its cost per message stays
far below the server's and one process per core can load a printd without becoming the limit.
"""
