-- A plain GET of the URL given to wrk (headers come from wrk -H).
dofile("bench/lua/report.lua")
