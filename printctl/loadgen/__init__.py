"""The load generator shared by `printctl loadtest` and the benchmarks (benchmarks/loadclient.py).

| module | what |
| --- | --- |
| `frames` | WebSocket client framing, permessage-deflate, the upgrade request: bytes only |
| `target` | the URL a run loads (one printd or a front), resolved once |
| `client` | many WebSocket connections on non-blocking sockets in one epoll loop per process |
| `payloads` | status bodies that compress like real ones |
| `stats` | HdrHistograms (encoded between processes, merged exactly), the process's CPU |
| `workers` | a coordinator and its worker processes, talking in JSON lines |
| `http` | keep-alive HTTP/1.1 requests in the same loop (the back office) |
| `plan` | `printctl loadtest`: what is simulated, who is who, how it splits over workers (pure) |
| `sim` | the simulated agent's journal decisions and the POS's retry rule (pure) |
| `fleet`, `worker` | one worker process's share of a load test, on the wire |
| `coordinator` | starts the workers, times the window and the drain, runs the exactly-once check |
| `report` | the workers' results merged, thresholds judged (pure) |

Nothing here imports trio: the generator is a plain epoll loop, so its cost per message stays
far below the server's and one process per core can load a printd without becoming the limit.
"""
