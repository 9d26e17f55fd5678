-- include: settle.lua
-- Scripts that can end a task settle its dependents in the same call (see
-- bo_queue.core.dependencies), and append what that did to their reply: the number of
-- dependents released to be sent, then the ids of the dependents it cancelled:
-- {main reply, an extra value or 0, released, cancelled id...}.
local function reply(main, extra, settled)
  local out = {main, extra or 0}
  for _, value in ipairs(settled or {0}) do table.insert(out, value) end
  return out
end
