//! The Lua scripts the link loads into Redis (each run atomically).

/// Numbers a message, keeps it in the room's stream and tells every node, atomically.
/// KEYS: meta hash, stream, and for a publish with an id its record. ARGV: epoch
/// offered, history, ttl ms, channel (the room's), origin, kind (t/b), payload, room,
/// history bytes, from (the publisher's `sub`, or empty), dedup window ms, how to
/// publish (SPUBLISH where Redis has sharded pub/sub, else PUBLISH).
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
redis.call(ARGV[12], ARGV[4], ARGV[8] .. '\n' .. epoch .. '\n' .. seq .. '\n' .. origin .. '\n' .. ARGV[6] .. ARGV[7])
return {epoch, seq}
";

/// A room's epoch (made with the one offered if the room is new), its seq, and the
/// first seq to read from its stream for the messages kept after `since` (0: none).
/// KEYS: meta hash, stream. ARGV: epoch offered, since, history, ttl ms. The messages
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
return {epoch, seq, start}
";

/// Keeps rooms alive for another TTL. KEYS: the rooms' keys. ARGV: ttl ms.
pub(super) const TOUCH: &str = r"
for _, key in ipairs(KEYS) do redis.call('PEXPIRE', key, ARGV[1]) end
return #KEYS
";
