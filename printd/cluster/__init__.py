"""How instances form one gateway: `base` is the backend interface (membership, the leader
lease, agent presence, messages between instances), `local` its in-process form for an
instance alone and `redis` its Redis form (over the client in `redis_client`/`resp`, the
server found from `target`); `node` is this instance's part (heartbeat rounds, the lead and its
chores, fencing), `membership` its pure rules and `routing` where an agent's messages go.
"""
