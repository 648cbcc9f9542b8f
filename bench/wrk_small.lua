-- wrk: many distinct small objects, mostly asked once: /s/<n>.bin, n counting up in each thread
-- from its own start (so the threads ask different objects), a quarter of the requests asking again
-- for one asked before.
--   wrk ... -s bench/wrk_small.lua URL -- OBJECTS

local dir = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
dofile(dir .. "wrk_report.lua")

local objects, next, first = 20000, 0, 0
function init(args)
   objects = tonumber(args[1]) or objects
   math.randomseed(id or 1)
   first = ((id or 1) - 1) * 7919  -- each thread starts elsewhere in the catalogue
   next = first
end

function request()
   local n
   if next > first and math.random() < 0.25 then
      n = math.random(first, next - 1) % objects
   else
      n = next % objects
      next = next + 1
   end
   return wrk.format(nil, string.format("/s/%d.bin", n))
end
