"""The Redis backend: membership, leader lease, presence, bus, status snapshot, rate limits.

Keys (all under `prefix`, default ``printd``):

| key | type | what |
| --- | --- | --- |
| `P:members`, `P:members:beat`, `P:members:exp` | hashes | member info, last beat, expiry (ms) |
| `P:leader` | string, PX ttl | the leader's instance id |
| `P:agents` | hash | `company:agent` -> `instance|incarnation|session` |
| `P:status:<company>` | hash, expires | printer id -> latest status item (for snapshots) |
| `P:rl:<key>` | sorted set, expires | rate-limit hits (sliding window log) |
| `P:bus:<topic>` | pub/sub channel | messages framed with the sender's incarnation |

Ids never contain ``:`` (auth's id character set), so ``company:agent`` fields are unambiguous.
Every multi-step primitive is one Lua script (atomic on the server), and expiry uses the
server's clock (`TIME`), so instances with skewed clocks agree on who is alive.
"""

from __future__ import annotations

import math
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import trio

from printd.cluster.base import (
    AgentKey,
    AgentLocation,
    ClusterBackend,
    ClusterUnavailable,
    ClusterView,
    Member,
    MemberIdInUse,
    MemberInfo,
    MessageHandler,
)
from printd.cluster.redis_client import LinkSettings, RedisLink, RedisUnavailable, Script, decode_map
from printd.cluster.resp import Arg, Reply, ReplyError
from printd.cluster.target import RedisTarget
from printd.ratelimit import Decision, LimitRule, LocalLimits

_NOW = "local t = redis.call('TIME') local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)\n"

TOUCH_MEMBER = Script(
    _NOW
    + """
local id, inc, info, ttl = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4])
local exp = tonumber(redis.call('HGET', KEYS[3], id) or '0')
if exp > now then
  local cur = redis.call('HGET', KEYS[1], id)
  if cur and cjson.decode(cur)['incarnation'] ~= inc then
    return {cur, now - tonumber(redis.call('HGET', KEYS[2], id) or now), exp - now}
  end
end
redis.call('HSET', KEYS[1], id, info)
redis.call('HSET', KEYS[2], id, now)
redis.call('HSET', KEYS[3], id, now + ttl)
return false
"""
)

DELETE_MEMBER = Script(
    """
local cur = redis.call('HGET', KEYS[1], ARGV[1])
if cur and cjson.decode(cur)['incarnation'] == ARGV[2] then
  for i = 1, 3 do redis.call('HDEL', KEYS[i], ARGV[1]) end
  return 1
end
return 0
"""
)

GET_CLUSTER = Script(
    _NOW
    + """
local out = {}
local exps = redis.call('HGETALL', KEYS[3])
for i = 1, #exps, 2 do
  local id, exp = exps[i], tonumber(exps[i + 1])
  if exp <= now then
    for k = 1, 3 do redis.call('HDEL', KEYS[k], id) end
  else
    local info = redis.call('HGET', KEYS[1], id)
    if info then
      out[#out + 1] = {info, now - tonumber(redis.call('HGET', KEYS[2], id) or now), exp - now}
    end
  end
end
return {out, redis.call('GET', KEYS[4]) or '', redis.call('PTTL', KEYS[4])}
"""
)

UPDATE_LEADER = Script(
    """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
"""
)

DELETE_LEADER = Script(
    """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""
)

CLAIM_AGENTS = Script(
    """
local out = {}
for i = 1, #ARGV, 3 do
  local old = redis.call('HGET', KEYS[1], ARGV[i])
  local newer = false
  if old then
    local s = tonumber(string.match(old, '^[^|]*|[^|]*|(%d+)$'))
    newer = s ~= nil and s > tonumber(ARGV[i + 1])
  end
  if not newer then redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 2]) end
  out[#out + 1] = old or ''
end
return out
"""
)

RELEASE_AGENTS = Script(
    """
for i = 1, #ARGV, 2 do
  if redis.call('HGET', KEYS[1], ARGV[i]) == ARGV[i + 1] then redis.call('HDEL', KEYS[1], ARGV[i]) end
end
return 0
"""
)

LOCATE_AGENTS = Script(
    _NOW
    + """
local live = {}
local out = {}
for i = 1, #ARGV do
  local v = redis.call('HGET', KEYS[1], ARGV[i])
  local ok = false
  if v then
    local inst, inc = string.match(v, '^([^|]*)|([^|]*)|')
    if live[inst] == nil then
      live[inst] = ''
      local exp = tonumber(redis.call('HGET', KEYS[3], inst) or '0')
      local info = redis.call('HGET', KEYS[2], inst)
      if exp > now and info then live[inst] = cjson.decode(info)['incarnation'] end
    end
    ok = live[inst] == inc
  end
  out[#out + 1] = ok and v or ''
end
return out
"""
)

HIT_LIMITS = Script(
    _NOW
    + """
local n = #KEYS
local allowed, remaining, retry = true, -1, 0
for i = 1, n do
  local limit, win = tonumber(ARGV[i]), tonumber(ARGV[n + i])
  redis.call('ZREMRANGEBYSCORE', KEYS[i], '-inf', now - win)
  local used = redis.call('ZCARD', KEYS[i])
  if used >= limit then
    allowed = false
    local freeing = redis.call('ZRANGE', KEYS[i], used - limit, used - limit, 'WITHSCORES')
    local wait = tonumber(freeing[2]) + win - now
    if wait > retry then retry = wait end
  elseif remaining < 0 or limit - used - 1 < remaining then
    remaining = limit - used - 1
  end
end
if not allowed then return {0, 0, retry} end
for i = 1, n do
  redis.call('ZADD', KEYS[i], now, ARGV[2 * n + 1])
  redis.call('PEXPIRE', KEYS[i], ARGV[n + i])
end
return {1, remaining, 0}
"""
)

INCARNATION_LEN = 16


def new_incarnation() -> str:
    """A random id for this process, fixed-length so bus frames can carry it cheaply."""
    return uuid.uuid4().hex[:INCARNATION_LEN]


def _ms(seconds: float) -> int:
    return max(1, int(seconds * 1000))


class RedisCluster(ClusterBackend):
    kind = "redis"

    def __init__(
        self,
        incarnation: str,
        on_message: MessageHandler,
        target: RedisTarget,
        *,
        prefix: str = "printd",
        settings: LinkSettings | None = None,
    ) -> None:
        if len(incarnation) != INCARNATION_LEN:
            raise ValueError(f"incarnation must be {INCARNATION_LEN} characters")
        super().__init__(incarnation, on_message)
        self.prefix = prefix
        self.link = RedisLink(target, on_message=self._on_frame, settings=settings)
        self._bus = f"{prefix}:bus:".encode()
        self._members = (f"{prefix}:members", f"{prefix}:members:beat", f"{prefix}:members:exp")
        self._leader = f"{prefix}:leader"
        self._agents = f"{prefix}:agents"
        self._me = incarnation.encode()
        self._local_limits = LocalLimits()  # while Redis is down
        #: status key -> when its TTL was last set (monotonic), for the connection since `_ttl_epoch`
        self._ttl_set: dict[str, float] = {}
        self._ttl_epoch: float | None = None

    # -- lifecycle ---------------------------------------------------------------------------

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        await self.link.run(task_status=task_status)

    @property
    def available(self) -> bool:
        return self.link.up

    async def wait_available(self) -> None:
        await self.link.wait_up()

    def on_reconnect(self, callback: Callable[[], Any]) -> None:
        self.link.on_up(callback)

    def state(self) -> dict[str, Any]:
        s = self.link.state
        return {
            "available": self.link.up,
            "server": s.server,
            "since": s.since,
            "error": s.error,
            "outages": s.outages,
        }

    async def _script(self, script: Script, keys: Sequence[Arg], args: Sequence[Arg]) -> Reply:
        try:
            return await self.link.run_script(script, keys, args)
        except RedisUnavailable as exc:
            raise ClusterUnavailable(f"redis unavailable: {exc}") from None
        except ReplyError as exc:
            raise ClusterUnavailable(f"redis error: {exc}") from None

    async def _pipeline(self, commands: Sequence[tuple[Arg, ...]]) -> list[Reply]:
        try:
            replies = await self.link.pipeline(commands)
        except RedisUnavailable as exc:
            raise ClusterUnavailable(f"redis unavailable: {exc}") from None
        for reply in replies:
            if isinstance(reply, ReplyError):
                raise ClusterUnavailable(f"redis error: {reply}")
        return replies

    # -- membership --------------------------------------------------------------------------

    async def touch_member(self, info: MemberInfo, ttl: float, *, register: bool = False) -> None:
        reply = await self._script(
            TOUCH_MEMBER, self._members, (info.instance_id, info.incarnation, info.encode(), _ms(ttl))
        )
        if isinstance(reply, list):
            raw, age, exp = reply
            assert isinstance(raw, bytes) and isinstance(age, int) and isinstance(exp, int)
            raise MemberIdInUse(Member(MemberInfo.decode(raw), age / 1000, exp / 1000))

    async def delete_member(self, instance_id: str, incarnation: str) -> None:
        await self._script(DELETE_MEMBER, self._members, (instance_id, incarnation))

    async def get_cluster(self) -> ClusterView:
        reply = await self._script(GET_CLUSTER, (*self._members, self._leader), ())
        assert isinstance(reply, list)
        rows, leader, pttl = reply
        members = []
        for row in rows if isinstance(rows, list) else []:
            raw, age, exp = row  # type: ignore[misc]
            members.append(Member(MemberInfo.decode(raw), age / 1000, exp / 1000))  # type: ignore[arg-type, operator]
        members.sort(key=lambda m: m.instance_id)
        holder = leader.decode() if isinstance(leader, bytes) and leader else None
        expires = pttl / 1000 if holder and isinstance(pttl, int) and pttl > 0 else None
        return ClusterView(tuple(members), holder, expires)

    # -- leader ------------------------------------------------------------------------------

    async def attempt_to_acquire_leader(self, instance_id: str, ttl: float) -> bool:
        (reply,) = await self._pipeline([("SET", self._leader, instance_id, "NX", "PX", _ms(ttl))])
        return reply == b"OK"

    async def update_leader(self, instance_id: str, ttl: float) -> bool:
        return await self._script(UPDATE_LEADER, (self._leader,), (instance_id, _ms(ttl))) == 1

    async def delete_leader(self, instance_id: str) -> None:
        await self._script(DELETE_LEADER, (self._leader,), (instance_id,))

    # -- presence ----------------------------------------------------------------------------

    async def claim_agents(
        self, claims: Sequence[tuple[AgentKey, AgentLocation]]
    ) -> list[AgentLocation | None]:
        if not claims:
            return []
        args: list[Arg] = []
        for (company, agent_id), location in claims:
            args += [f"{company}:{agent_id}", location.session, location.encode()]
        reply = await self._script(CLAIM_AGENTS, (self._agents,), args)
        return [_location(r) for r in reply] if isinstance(reply, list) else [None] * len(claims)

    async def release_agents(self, releases: Sequence[tuple[AgentKey, AgentLocation]]) -> None:
        if not releases:
            return
        args: list[Arg] = []
        for (company, agent_id), location in releases:
            args += [f"{company}:{agent_id}", location.encode()]
        await self._script(RELEASE_AGENTS, (self._agents,), args)

    async def locate_agents(self, keys: Sequence[AgentKey]) -> list[AgentLocation | None]:
        if not keys:
            return []
        fields = [f"{company}:{agent_id}" for company, agent_id in keys]
        reply = await self._script(LOCATE_AGENTS, (self._agents, self._members[0], self._members[2]), fields)
        return [_location(r) for r in reply] if isinstance(reply, list) else [None] * len(keys)

    # -- bus ---------------------------------------------------------------------------------

    def _channel(self, topic: str) -> bytes:
        return self._bus + topic.encode()

    def subscribe(self, topic: str) -> None:
        self.link.subscribe(self._channel(topic))

    def unsubscribe(self, topic: str) -> None:
        self.link.unsubscribe(self._channel(topic))

    async def publish(self, messages: Sequence[tuple[str, bytes]]) -> None:
        if messages:
            me = self._me
            await self._pipeline([("PUBLISH", self._channel(t), me + payload) for t, payload in messages])

    def _on_frame(self, channel: bytes, frame: bytes) -> None:
        if frame[:INCARNATION_LEN] == self._me or not channel.startswith(self._bus):
            return  # our own message, back from the server: no echo
        self.on_message(channel[len(self._bus) :].decode(), frame[INCARNATION_LEN:])

    # -- status snapshot ---------------------------------------------------------------------

    def _status_key(self, company: str) -> str:
        return f"{self.prefix}:status:{company}"

    async def save_status(self, updates: Sequence[tuple[str, Mapping[str, bytes]]], ttl: float) -> None:
        """HSET every tick; the TTL is renewed only every tenth of it per company (a PEXPIRE each
        tick was a third of the cluster's Redis commands), and at once on a new connection (a
        Redis restarted empty gets keys without a TTL otherwise)."""
        if self.link.state.since != self._ttl_epoch:
            self._ttl_set.clear()
            self._ttl_epoch = self.link.state.since
        now = time.monotonic()
        commands: list[tuple[Arg, ...]] = []
        renewed = []
        for company, items in updates:
            if items:
                key = self._status_key(company)
                commands.append(("HSET", key, *(x for pair in items.items() for x in pair)))
                if now - self._ttl_set.get(key, -math.inf) >= ttl / 10:
                    commands.append(("PEXPIRE", key, _ms(ttl)))
                    renewed.append(key)
        if commands:
            await self._pipeline(commands)
            self._ttl_set.update(dict.fromkeys(renewed, now))

    async def load_status(self, company: str) -> dict[str, bytes]:
        (reply,) = await self._pipeline([("HGETALL", self._status_key(company))])
        return {k.decode(): v for k, v in decode_map(reply).items()}

    async def drop_status(self, company: str, printer_ids: Sequence[str]) -> None:
        if printer_ids:
            await self._pipeline([("HDEL", self._status_key(company), *printer_ids)])

    # -- rate limits -------------------------------------------------------------------------

    async def hit_limits(self, rules: Sequence[LimitRule]) -> Decision:
        keys = [f"{self.prefix}:rl:{r.key}" for r in rules]
        args: list[Arg] = [*(r.limit for r in rules), *(_ms(r.window) for r in rules), uuid.uuid4().hex]
        try:
            reply = await self._script(HIT_LIMITS, keys, args)
        except ClusterUnavailable:
            return await self._local_limits.hit_limits(rules)
        assert isinstance(reply, list)
        allowed, remaining, retry_ms = reply
        assert isinstance(allowed, int) and isinstance(remaining, int) and isinstance(retry_ms, int)
        return Decision(bool(allowed), max(0, remaining), retry_ms / 1000)


def _location(raw: Reply) -> AgentLocation | None:
    if not isinstance(raw, bytes) or not raw:
        return None
    try:
        return AgentLocation.decode(raw)
    except ValueError:
        return None
