"""The queue's Lua scripts: every change that touches more than one key is one of these, so web
servers and workers on many hosts can share the queue without taking the same message twice,
losing one, or leaving keys behind. Key names are built in ``serving/queue.py`` (``QueueKeys``).

Each script lists its KEYS and ARGV. Lua arrays count from 1.
"""

# Ring the doorbell a worker blocks on, unless a ring is already waiting to be heard. Its TTL
# bounds a ring nobody hears (no worker runs); workers also look at the lanes every second.
_RING = """
local function ring(doorbell)
  if redis.call('LLEN', doorbell) == 0 then
    redis.call('RPUSH', doorbell, '1')
    redis.call('PEXPIRE', doorbell, 60000)
  end
end
"""

# Queue a request's images unless the lane is full; mark each image as awaited.
# KEYS[1] lane, KEYS[2] the request's waiting hash, KEYS[3] doorbell
# ARGV[1] the lane's bound, ARGV[2] waiting-hash TTL (ms), ARGV[3..] one message per image,
#         in image order (message i is image i - 3)
# Returns 1 when queued, 0 when the lane is full (nothing is written).
ENQUEUE = (
    _RING
    + """
if redis.call('LLEN', KEYS[1]) >= tonumber(ARGV[1]) then return 0 end
for index = 0, #ARGV - 3 do redis.call('HSET', KEYS[2], index, '1') end
redis.call('PEXPIRE', KEYS[2], ARGV[2])
redis.call('RPUSH', KEYS[1], unpack(ARGV, 3))
ring(KEYS[3])
return 1
"""
)

# Take up to ARGV[1] messages into the worker's processing lists: interactive first, then bulk.
# KEYS[1] interactive lane, KEYS[2] bulk lane, KEYS[3] interactive processing list,
# KEYS[4] bulk processing list, KEYS[5] doorbell
# ARGV[1] most messages to take
# Returns {interactive messages, bulk messages}. Work left behind rings the doorbell, so an idle
# worker wakes for it; empty lanes silence it.
TAKE = (
    _RING
    + """
local want = tonumber(ARGV[1])
local taken = {}
for lane = 1, 2 do
  local items = {}
  if want > 0 then items = redis.call('LRANGE', KEYS[lane], 0, want - 1) end
  if #items > 0 then
    redis.call('LTRIM', KEYS[lane], #items, -1)
    redis.call('RPUSH', KEYS[lane + 2], unpack(items))
  end
  want = want - #items
  taken[lane] = items
end
if redis.call('LLEN', KEYS[1]) + redis.call('LLEN', KEYS[2]) > 0 then
  ring(KEYS[5])
else
  redis.call('DEL', KEYS[5])
end
return taken
"""
)

# Answer interactive images: write each answer only while its image is still awaited, and stop
# awaiting it, so an image computed twice (requeued from a worker that froze) is answered once.
# KEYS: per answer, the request's waiting hash and its result list
# ARGV[1] result TTL (s); per answer, the image index and the answer (ARGV[2j+2], ARGV[2j+3])
# Returns how many answers were written.
ANSWER_REQUESTS = """
local written = 0
for j = 0, #KEYS / 2 - 1 do
  if redis.call('HDEL', KEYS[2 * j + 1], ARGV[2 * j + 2]) == 1 then
    redis.call('RPUSH', KEYS[2 * j + 2], ARGV[2 * j + 3])
    redis.call('EXPIRE', KEYS[2 * j + 2], ARGV[1])
    written = written + 1
  end
end
return written
"""

# A client gives up: stop awaiting its images, take back those still queued, and collect any
# answers that landed meanwhile.
# KEYS[1] interactive lane, KEYS[2] the request's waiting hash, KEYS[3] its result list,
# KEYS[4] bulk lane, KEYS[5] doorbell
# ARGV the messages of the images not yet answered
# Returns {messages taken back, answers that landed late}.
WITHDRAW = """
redis.call('DEL', KEYS[2])
local removed = 0
for i = 1, #ARGV do removed = removed + redis.call('LREM', KEYS[1], 1, ARGV[i]) end
local late = redis.call('LRANGE', KEYS[3], 0, -1)
redis.call('DEL', KEYS[3])
if redis.call('LLEN', KEYS[1]) + redis.call('LLEN', KEYS[4]) == 0 then redis.call('DEL', KEYS[5]) end
return {removed, late}
"""

# Return a dead worker's unanswered messages to the head of their lanes, in their order.
# KEYS[1] its interactive processing list, KEYS[2] its bulk processing list, KEYS[3] its
# heartbeat, KEYS[4] interactive lane, KEYS[5] bulk lane, KEYS[6] doorbell
# Returns how many messages moved (0 while the heartbeat lives: the worker is not dead).
REQUEUE = (
    _RING
    + """
if redis.call('EXISTS', KEYS[3]) == 1 then return 0 end
local moved = 0
for lane = 1, 2 do
  local items = redis.call('LRANGE', KEYS[lane], 0, -1)
  for i = #items, 1, -1 do redis.call('LPUSH', KEYS[lane + 3], items[i]) end
  redis.call('DEL', KEYS[lane])
  moved = moved + #items
end
if moved > 0 then ring(KEYS[6]) end
return moved
"""
)
