-- Plugin configuration with defaults.
local M = {}

M.defaults = {
  enabled = true,
  debounce_ms = 150,
  filetypes = { "lua", "python" },
}

local function merge(base, extra)
  local out = {}
  for k, v in pairs(base) do
    out[k] = v
  end
  for k, v in pairs(extra or {}) do
    out[k] = v
  end
  return out
end

function M.setup(opts)
  M.options = merge(M.defaults, opts)
  if not M.options.enabled then
    <|cursor|>
  end
end

return M
