-- wrk: what a browser's <video> asks: a 1 MiB range at any byte of the object, with the dozen
-- fields a browser sends, from many clients (each its own User-Agent, cookie, language and page),
-- so that no two requests are alike but for the fields the answer depends on.
--   wrk ... -s bench/wrk_browser.lua URL -- OBJECT_SIZE [RANGE_SIZE]
-- Each wrk thread draws from its own fixed seed, so runs ask for the same ranges.

local dir = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
dofile(dir .. "wrk_report.lua")

local size, span = 0, 1048576
local agents = {
   "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36",
   "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_6) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/18.1 Safari/605.1.15",
   "Mozilla/5.0 (X11; Linux x86_64; rv:133.0) Gecko/20100101 Firefox/133.0",
   "Mozilla/5.0 (iPhone; CPU iPhone OS 18_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Mobile/15E148",
}
local languages = {"en-US,en;q=0.9", "fr-FR,fr;q=0.9,en;q=0.8", "de-DE,de;q=0.9", "es-ES,es;q=0.9,en;q=0.5"}

function init(args)
   size = tonumber(args[1]) or error("usage: -- OBJECT_SIZE [RANGE_SIZE]")
   span = tonumber(args[2]) or span
   math.randomseed(id or 1)
end

function request()
   local client = math.random(1, 1000)
   local first = math.random(0, size - span)
   return wrk.format(nil, nil, {
      ["Range"] = string.format("bytes=%d-%d", first, first + span - 1),
      ["User-Agent"] = agents[client % #agents + 1],
      ["Accept"] = "*/*",
      ["Accept-Language"] = languages[client % #languages + 1],
      ["Accept-Encoding"] = "identity;q=1, *;q=0",
      ["Referer"] = string.format("https://video.example/watch/%d", client % 97),
      ["Cookie"] = string.format("session=%08x%08x; consent=yes", client, math.random(0, 2147483647)),
      ["Sec-Fetch-Site"] = "same-site",
      ["Sec-Fetch-Mode"] = "no-cors",
      ["Sec-Fetch-Dest"] = "video",
      ["Sec-CH-UA-Platform"] = '"Windows"',
      ["DNT"] = "1",
   })
end
