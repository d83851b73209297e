-- Written by dockscale into its state directory and loaded by the managed HAProxy
-- (lua-load). Scale to zero: a request to a backend with no usable server is held
-- here until one is usable, instead of being answered 503 at once.
--
--   http-request lua.dockscale_hold <timeout_ms> <retry_after_s> if { nbsrv lt 1 }
--
-- The ACL keeps the action off the path of every request while servers are up. The
-- action sleeps in steps of 10 ms (core.msleep yields: the worker goes on serving
-- other streams) and checks `nbsrv` again; past the timeout it answers 503 with
-- Retry-After. dockscale reads the counters with `dockscale holds` on the admin
-- socket: a request held at zero wakes the service.

local STEP_MS = 10
-- Hold times kept for the next reading; beyond it they are only counted.
local MAX_TIMES = 1000

local holds = {}

local function entry(backend)
  local e = holds[backend]
  if e == nil then
    e = { waiting = 0, held = 0, released = 0, timed_out = 0, times = {} }
    holds[backend] = e
  end
  return e
end

local function now_ms()
  local t = core.now()
  return t.sec * 1000 + t.usec / 1000
end

core.register_action("dockscale_hold", { "http-req" }, function(txn, timeout_ms, retry_after)
  local backend = txn.f:be_name()
  local limit = tonumber(timeout_ms) or 30000
  local e = entry(backend)
  -- core.now() is the time of the worker's current loop, a few ms behind the real
  -- time when this request's analysis ran late in it: the clock is read after a yield
  -- (a fresh loop), and one step more keeps a hold at least the timeout.
  core.yield()
  local start = now_ms()
  e.waiting = e.waiting + 1
  e.held = e.held + 1
  while txn.f:nbsrv(backend) == 0 do
    if now_ms() - start >= limit + STEP_MS then
      e.waiting = e.waiting - 1
      e.timed_out = e.timed_out + 1
      local reply = txn:reply()
      reply:set_status(503, "Service Unavailable")
      reply:add_header("retry-after", retry_after or "1")
      reply:add_header("content-type", "text/plain")
      reply:add_header("cache-control", "no-store")
      reply:set_body("no replica of this service became ready in time: retry later\n")
      txn:done(reply)
      return
    end
    core.msleep(STEP_MS)
  end
  e.waiting = e.waiting - 1
  e.released = e.released + 1
  if #e.times < MAX_TIMES then
    e.times[#e.times + 1] = string.format("%.1f", now_ms() - start)
  end
end, 2)

-- One line per backend that held a request since HAProxy started:
--   <backend> <waiting> <held> <released> <timed_out> <ms,ms,...|->
-- The hold times are those of the requests released since the last reading.
core.register_cli({ "dockscale", "holds" }, "dockscale holds : requests held per backend (scale to zero)",
  function(applet)
    for backend, e in pairs(holds) do
      local times = "-"
      if #e.times > 0 then
        times = table.concat(e.times, ",")
      end
      e.times = {}
      applet:send(string.format("%s %d %d %d %d %s\n", backend, e.waiting, e.held,
        e.released, e.timed_out, times))
    end
  end)
