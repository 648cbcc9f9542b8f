-- wrk: the same GET, but each request with a header field of its own (X-Request-Number), so
-- that no two requests are identical: a cache that keeps answers for identical requests cannot
-- replay them; one that keys them by the fields the answer depends on can (edgecache's ready answers).
--   wrk ... -s bench/wrk_distinct.lua URL

local dir = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
dofile(dir .. "wrk_report.lua")

local n = 0
function request()
   n = n + 1
   return wrk.format(nil, nil, {["X-Request-Number"] = (id or 1) .. "-" .. n})
end
