-- state::changes: entries of one change log stream (on a cluster, one bucket's). KEYS: the
-- stream, its gap counter. ARGV: the position to read after, '<id> <n> <gaps>' ('' from the
-- oldest kept, 'now' from the end: nothing, and the position of the newest entry), how many
-- entries at most, how many to look at at most, a scope ('' any), a prefix of scopes ('' any).
-- A position is an entry id and that entry's number: the stream counts every entry ever
-- added (entries-added), the log is only ever trimmed from its front, so the oldest entry
-- kept is number entries-added - length + 1, and a position whose next number is older
-- than that was trimmed past. <gaps> is the gap counter when the position was given: the
-- changes made with the log off since then are not in the stream, so a position with
-- another count is compacted too (its reader goes on from it, told).
-- Returns {COMPACTED, the position to go on from: before the oldest kept, or the same with
-- the count of now} when entries right after the position were trimmed, or the position is
-- ahead of the stream (another stream's), or changes were made unlogged since; else
-- {FOUND, the position the read stopped at, {{position after it, kind, scope, key, old,
-- new, version, event id}, ...}, the position it started after}.
local log, gap_counter = KEYS[1], KEYS[2]
local after, limit, budget = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local gaps = string.format('%d', tonumber(redis.call('GET', gap_counter) or '0'))
local want_scope, prefix = ARGV[4], ARGV[5]

local length, added, newest, first_id = 0, 0, '0-0', false
if redis.call('EXISTS', log) == 1 then
  local info = redis.call('XINFO', 'STREAM', log)
  for i = 1, #info, 2 do
    local name = info[i]
    if name == 'length' then length = tonumber(info[i + 1])
    elseif name == 'entries-added' then added = tonumber(info[i + 1])
    elseif name == 'last-generated-id' then newest = info[i + 1]
    elseif name == 'first-entry' and info[i + 1] then first_id = info[i + 1][1] end
  end
end

local function parts(id)
  local ms, seq = string.match(id, '^(%d+)-(%d+)$')
  return tonumber(ms), tonumber(seq)
end
local function before(a, b)
  local am, as = parts(a)
  local bm, bs = parts(b)
  return am < bm or (am == bm and as < bs)
end
-- the position just before the oldest entry kept: any id below its id will do
local function oldest()
  if not first_id then return newest .. ' ' .. string.format('%d', added) .. ' ' .. gaps end
  local ms, seq = parts(first_id)
  local id
  if seq > 0 then id = string.format('%d', ms) .. '-' .. string.format('%d', seq - 1)
  else id = string.format('%d', ms - 1) .. '-18446744073709551615' end
  return id .. ' ' .. string.format('%d', added - length) .. ' ' .. gaps
end

if after == 'now' then
  local at_end = newest .. ' ' .. string.format('%d', added) .. ' ' .. gaps
  return {FOUND, at_end, {}, at_end}
end
if after == '' then after = oldest() end
local at_id, at_n, at_gaps = string.match(after, '^(%d+%-%d+) (%d+) (%d+)$')
at_n = tonumber(at_n)
if at_n < added - length or at_n > added or before(newest, at_id) then
  return {COMPACTED, oldest()}
end
if at_gaps ~= gaps then
  return {COMPACTED, at_id .. ' ' .. string.format('%d', at_n) .. ' ' .. gaps}
end
local rows = redis.call('XRANGE', log, '(' .. at_id, '+', 'COUNT', budget)
local out, last_id, n = {}, at_id, at_n
for _, row in ipairs(rows) do
  local f = row[2]  -- t kind s scope k key o old n new v version i event id
  local scope = f[4]
  last_id, n = row[1], n + 1
  if (want_scope == '' or scope == want_scope)
      and (prefix == '' or string.sub(scope, 1, #prefix) == prefix) then
    out[#out + 1] = {row[1] .. ' ' .. string.format('%d', n) .. ' ' .. gaps, f[2], scope, f[6],
      f[8], f[10], f[12], f[14]}
    if #out == limit then break end
  end
end
return {FOUND, last_id .. ' ' .. string.format('%d', n) .. ' ' .. gaps, out, after}
