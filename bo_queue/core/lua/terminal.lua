-- is_terminal(state): whether a task in `state` has ended. The states are
-- bo_queue.states.TERMINAL_STATES, filled in by bo_queue.core.scripts.
local TERMINAL = __TERMINAL_STATES__
local function is_terminal(state) return TERMINAL[state] == true end
