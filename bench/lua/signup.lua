-- POST /user with a new username and email on every request.
-- wrk -s signup.lua http://127.0.0.1:PORT/user -- <run-prefix> <password>
-- Names are <run-prefix>t<thread>n<counter>: the prefix is random per run (chosen by the benchmark), the
-- thread number is given by setup() and the counter is per thread, so no two requests ever collide.
local next_thread = 0

setup = function(thread)
  next_thread = next_thread + 1
  thread:set("thread_number", next_thread)
end

init = function(args)
  prefix = args[1]
  password = args[2]
  counter = 0
  wrk.method = "POST"
  wrk.headers["Content-Type"] = "application/json"
end

request = function()
  counter = counter + 1
  local name = prefix .. "t" .. thread_number .. "n" .. counter
  local body = '{"username":"' .. name .. '","email":"' .. name .. '@example.com","password":"' .. password .. '"}'
  return wrk.format(nil, nil, nil, body)
end
