-- GET /user with a bearer token.
-- wrk -s get_user.lua http://127.0.0.1:PORT/user -- <token>
-- The request is built once (no request() function), so wrk sends it at full speed.
init = function(args)
  wrk.method = "GET"
  wrk.headers["Authorization"] = "Bearer " .. args[1]
end
