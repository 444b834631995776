-- POST /user/auth with one user's correct password (also the sign-in flood).
-- wrk -s signin.lua http://127.0.0.1:PORT/user/auth -- <username> <password>
-- Both values are plain letters and digits chosen by the benchmark, so no JSON escaping is needed.
init = function(args)
  wrk.method = "POST"
  wrk.headers["Content-Type"] = "application/json"
  wrk.body = '{"username":"' .. args[1] .. '","password":"' .. args[2] .. '"}'
end
