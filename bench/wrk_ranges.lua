-- wrk: GET random 1 MiB ranges of one object, half of them aligned on 1 MiB, half starting
-- at any byte (these cross a 1 MiB boundary, and sometimes a 4 MiB slice).
--   wrk ... -s bench/wrk_ranges.lua URL -- OBJECT_SIZE [RANGE_SIZE]
-- Each wrk thread draws from its own fixed seed, so runs ask for the same ranges.

local dir = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
dofile(dir .. "wrk_report.lua")

local size, span, headers = 0, 1048576, {}
function init(args)
   size = tonumber(args[1]) or error("usage: -- OBJECT_SIZE [RANGE_SIZE]")
   span = tonumber(args[2]) or span
   if size < span then error("object smaller than one range") end
   math.randomseed(id or 1)
end

function request()
   local first
   if math.random() < 0.5 then
      first = math.random(0, math.floor(size / span) - 1) * span
   else
      first = math.random(0, size - span)
   end
   headers["Range"] = string.format("bytes=%d-%d", first, first + span - 1)
   return wrk.format(nil, nil, headers)
end
