//! The Lua scripts the link loads into Redis (each run atomically).

/// Numbers a message, keeps it in the room's stream and tells every node, atomically.
/// KEYS: meta hash, stream, and for a publish with an id its record. ARGV: epoch
/// offered, history, ttl ms, channel, origin, kind (t/b), payload, room, history
/// bytes, from (the publisher's `sub`, or empty), dedup window ms.
/// A record (`EPOCH SEQ`, expiring after the window) says that the id was published
/// with that seq: a repeat in the same epoch is answered `{epoch, seq, 1}` and not
/// published again (a record of an earlier epoch, a room Redis lost, is not one).
/// The stream's ids are `seq-0`, so XRANGE reads by seq. A `from` is kept as the
/// entry's field `f`, and goes live after the origin, in hex (a `sub` may hold a
/// newline): `ORIGIN HEX`. The stream keeps at most `history` messages and
/// `history bytes` of payload (the meta hash counts them; the newest message always
/// stays).
pub(super) const PUBLISH: &str = r"
if redis.call('HSETNX', KEYS[1], 'epoch', ARGV[1]) == 1 then redis.call('DEL', KEYS[2]) end
local epoch = redis.call('HGET', KEYS[1], 'epoch')
if KEYS[3] then
  local seen = redis.call('GET', KEYS[3])
  if seen then
    local e, s = string.match(seen, '^(%S+) (%d+)$')
    if e == epoch then return {epoch, tonumber(s), 1} end
  end
end
local seq = redis.call('HINCRBY', KEYS[1], 'seq', 1)
if KEYS[3] then redis.call('SET', KEYS[3], epoch .. ' ' .. seq, 'PX', ARGV[11]) end
if tonumber(ARGV[2]) > 0 then
  if ARGV[10] == '' then
    redis.call('XADD', KEYS[2], seq .. '-0', 'k', ARGV[6], 'o', ARGV[5], 'd', ARGV[7])
  else
    redis.call('XADD', KEYS[2], seq .. '-0', 'k', ARGV[6], 'o', ARGV[5], 'f', ARGV[10], 'd', ARGV[7])
  end
  local bytes = redis.call('HINCRBY', KEYS[1], 'bytes', #ARGV[7])
  local len = redis.call('XLEN', KEYS[2])
  while len > 1 and (len > tonumber(ARGV[2]) or bytes > tonumber(ARGV[9])) do
    local oldest = redis.call('XRANGE', KEYS[2], '-', '+', 'COUNT', 1)[1]
    local size = 0
    for i = 1, #oldest[2], 2 do
      if oldest[2][i] == 'd' then size = #oldest[2][i + 1] end
    end
    redis.call('XDEL', KEYS[2], oldest[1])
    bytes = redis.call('HINCRBY', KEYS[1], 'bytes', -size)
    len = len - 1
  end
  redis.call('PEXPIRE', KEYS[2], ARGV[3])
end
redis.call('PEXPIRE', KEYS[1], ARGV[3])
local origin = ARGV[5]
if ARGV[10] ~= '' then
  origin = origin .. ' ' .. string.gsub(ARGV[10], '.', function(c) return string.format('%02x', string.byte(c)) end)
end
redis.call('PUBLISH', ARGV[4], ARGV[8] .. '\n' .. epoch .. '\n' .. seq .. '\n' .. origin .. '\n' .. ARGV[6] .. ARGV[7])
return {epoch, seq}
";

/// A room's epoch (made with the one offered if the room is new), its seq, the
/// first seq to read from its stream for the messages kept after `since` (0: none),
/// and its presence hash (each node's part, flat: node, part, ...).
/// KEYS: meta hash, stream, presence hash. ARGV: epoch offered, since, history, ttl ms. The messages
/// are read by the link, newest first, in pieces (plain XREVRANGEs, not Lua: copying
/// a large stream through Lua held Redis for most of a second), until
/// `--history-memory` bytes.
pub(super) const FETCH: &str = r"
if redis.call('HSETNX', KEYS[1], 'epoch', ARGV[1]) == 1 then redis.call('DEL', KEYS[2]) end
local epoch = redis.call('HGET', KEYS[1], 'epoch')
local seq = tonumber(redis.call('HGET', KEYS[1], 'seq') or '0')
redis.call('PEXPIRE', KEYS[1], ARGV[4])
redis.call('PEXPIRE', KEYS[2], ARGV[4])
local start = math.max(tonumber(ARGV[2]) + 1, seq - tonumber(ARGV[3]) + 1)
if tonumber(ARGV[3]) == 0 or start > seq then start = 0 end
return {epoch, seq, start, redis.call('HGETALL', KEYS[3])}
";

/// Keeps rooms alive for another TTL. KEYS: the rooms' keys. ARGV: ttl ms.
pub(super) const TOUCH: &str = r"
for _, key in ipairs(KEYS) do redis.call('PEXPIRE', key, ARGV[1]) end
return #KEYS
";

/// A node's part of a room's presence: kept in the room's presence hash under the
/// node's name (an empty part deletes the field) and told on the live channel as
/// `ROOM\nNODE\npresence\nPART` (a line whose third line is no seq: older nodes'
/// `parse_live` rejects it). KEYS: presence hash. ARGV: node, part, channel, room, ttl ms.
pub(super) const PRESENCE: &str = r"
if ARGV[2] == '' then
  redis.call('HDEL', KEYS[1], ARGV[1])
else
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
  redis.call('PEXPIRE', KEYS[1], ARGV[5])
end
redis.call('PUBLISH', ARGV[3], ARGV[4] .. '\n' .. ARGV[1] .. '\npresence\n' .. ARGV[2])
return 1
";

/// The node registry's heartbeat: the node's entry gets Redis's time (ms), nodes
/// silent for longer than the dead time are removed, and the live ones come back:
/// `{now, node, last, members, node, last, members, ...}` (at most `max` nodes).
/// KEYS: registry (ZSET node -> last heartbeat), members (HASH node -> `MEMBERS
/// CONNECTIONS UPTIME_S`). ARGV: node, its `MEMBERS CONNECTIONS UPTIME_S`, dead ms, max.
pub(super) const HEARTBEAT: &str = r"
local t = redis.call('TIME')
local ms = t[1] .. string.format('%03d', math.floor(tonumber(t[2]) / 1000))
local now = tonumber(ms)
redis.call('ZADD', KEYS[1], ms, ARGV[1])
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
local dead = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', '(' .. (now - tonumber(ARGV[3])))
for _, node in ipairs(dead) do
  redis.call('ZREM', KEYS[1], node)
  redis.call('HDEL', KEYS[2], node)
end
local live = redis.call('ZRANGE', KEYS[1], 0, tonumber(ARGV[4]) - 1, 'WITHSCORES')
local out = {now}
for i = 1, #live, 2 do
  out[#out + 1] = live[i]
  out[#out + 1] = live[i + 1]
  out[#out + 1] = redis.call('HGET', KEYS[2], live[i]) or '0'
end
return out
";

/// A node that stops leaves the registry. KEYS: registry, members. ARGV: node.
pub(super) const LEAVE: &str = r"
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('HDEL', KEYS[2], ARGV[1])
return 1
";

/// Deletes a node's part of a room if the registry does not list the node as alive
/// (its last heartbeat older than the dead time), telling the nodes (an empty part).
/// KEYS: presence hash, registry. ARGV: node, dead ms, channel, room.
pub(super) const FORGET: &str = r"
local last = redis.call('ZSCORE', KEYS[2], ARGV[1])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if last and tonumber(last) > now - tonumber(ARGV[2]) then return 0 end
if redis.call('HDEL', KEYS[1], ARGV[1]) == 1 then
  redis.call('PUBLISH', ARGV[3], ARGV[4] .. '\n' .. ARGV[1] .. '\npresence\n')
end
return 1
";
