-- dgemma-lsp for Neovim: registers the server and shows its fill-in-the-middle completions as ghost
-- text, with Neovim's own inline completion on 0.12+ and with ./ghost.lua on 0.10-0.11.
local M = {}

local api = vim.api
local NAME = 'dgemma'

M.defaults = {
  -- How to start the server; e.g. { '/path/to/venv/bin/python', '-m', 'dgemma_lsp', '--stdio' }.
  cmd = { 'dgemma-lsp', '--stdio' },
  -- The server's initializationOptions, e.g. { modelPath = '~/models/dg', device = 'cuda' }: see the
  -- README's Configuration.
  init_options = {},
  -- nil: every filetype.
  filetypes = nil,
  -- 'auto' (native on 0.12+, else the shim), 'native', 'shim', or false (completion menu only).
  inline = 'auto',
  debounce_ms = 200, -- shim only; Neovim's own inline completion waits 200 ms
  -- Insert-mode keys; false turns one off. Accept falls back to the key itself when nothing is shown.
  keymaps = {
    accept = '<Tab>',
    accept_word = '<M-Right>',
    accept_line = '<M-C-Right>',
    dismiss = '<C-]>', -- shim only
    trigger = '<M-\\>', -- shim only
  },
}

M.config = vim.deepcopy(M.defaults)

--- The server's last dgemma/status (state, message, device, model, lastLatencyMs) and what the shim
--- measured itself (requests in flight, measured_ms), for servers that don't send it.
M.status = { state = 'stopped', requests = 0 }

local function set_status(fields)
  M.status = vim.tbl_extend('force', M.status, fields)
  -- Scheduled: on_exit runs in a fast event, where neither is allowed.
  vim.schedule(function()
    api.nvim_exec_autocmds('User', { pattern = 'DgemmaStatus', modeline = false })
    vim.cmd.redrawstatus() -- for statuslines that show M.statusline()
  end)
end

--- A short text for the statusline, e.g. `dgemma: ready 240 ms`.
function M.statusline()
  local s = M.status
  local state = (s.state == 'ready' and s.requests > 0) and 'busy' or s.state
  local latency_ms = s.lastLatencyMs or s.measured_ms
  return ('dgemma: %s%s'):format(state, latency_ms and (' %d ms'):format(latency_ms) or '')
end

--- Whether Neovim's own inline completion shows the suggestions (else the shim does).
function M.use_native()
  local inline = M.config.inline
  return inline == 'native' or (inline == 'auto' and vim.lsp.inline_completion ~= nil)
end

--- What a key does when there is nothing to accept: the mapping it had before ours (nvim-cmp's, a snippet
--- engine's), else the key itself. Keys go in with 'i', ahead of those still waiting (a macro, :normal).
---@param previous table maparg()'s dict for the key; empty when it had no mapping
local function fallback(lhs, previous)
  if not previous.lhs then
    api.nvim_feedkeys(vim.keycode(lhs), 'in', false)
    return
  end
  if previous.callback and previous.expr == 0 then
    previous.callback()
    return
  end
  local keys
  if previous.callback then
    keys = previous.callback()
    keys = previous.replace_keycodes == 1 and vim.keycode(keys) or keys
  elseif previous.expr == 1 then
    keys = vim.fn.eval((previous.rhs:gsub('<[Ss][Ii][Dd]>', ('<SNR>%d_'):format(previous.sid))))
  else
    keys = vim.keycode(previous.rhs)
  end
  api.nvim_feedkeys(keys, previous.noremap == 1 and 'in' or 'im', false)
end

--- The global insert-mode mapping of `lhs`, looked up when the key is pressed: a plugin may map it later.
local function global_mapping(lhs)
  local raw = vim.keycode(lhs)
  for _, mapping in ipairs(api.nvim_get_keymap('i')) do
    if mapping.lhsraw == raw then
      return mapping
    end
  end
  return {}
end

local function map(bufnr, name, fn)
  local lhs = M.config.keymaps[name]
  if not lhs then
    return
  end
  local desc = 'dgemma: ' .. name:gsub('_', ' ')
  local previous = api.nvim_buf_call(bufnr, function()
    return vim.fn.maparg(lhs, 'i', false, true)
  end)
  if previous.desc == desc then
    return -- mapped when the buffer first attached (this is a restarted server)
  end
  -- Ours hides another buffer-local mapping of the key for good, so keep that one.
  local replaced = previous.buffer == 1 and previous or nil
  vim.keymap.set('i', lhs, function()
    if not fn() then
      fallback(lhs, replaced or global_mapping(lhs))
    end
  end, { buffer = bufnr, desc = desc })
end

local function native_accept(kind)
  if kind == 'all' then
    return vim.lsp.inline_completion.get()
  end
  local split = require('dgemma.ghost').split
  return vim.lsp.inline_completion.get({
    on_accept = function(item)
      local text = type(item.insert_text) == 'table' and item.insert_text.value or item.insert_text
      local row, col = unpack(api.nvim_win_get_cursor(0))
      -- Neovim keeps showing an item while the user types its first characters: skip those.
      local start = item.range and item.range.start
      if start and start.row == row - 1 and start.col <= col then
        local typed = api.nvim_get_current_line():sub(start.col + 1, col)
        text = vim.startswith(text, typed) and text:sub(#typed + 1) or text
      end
      local lines = vim.split(split(text, kind), '\n', { plain = true })
      api.nvim_buf_set_text(0, row - 1, col, row - 1, col, lines)
      api.nvim_win_set_cursor(0, { row + #lines - 1, (#lines == 1 and col or 0) + #lines[#lines] })
    end,
  })
end

local function on_attach(client, bufnr)
  if M.config.inline == false then
    return
  end
  if M.use_native() then
    vim.lsp.inline_completion.enable(true, { bufnr = bufnr })
    for _, kind in ipairs({ 'all', 'word', 'line' }) do
      map(bufnr, kind == 'all' and 'accept' or 'accept_' .. kind, function()
        return native_accept(kind)
      end)
    end
    return
  end
  local ghost = require('dgemma.ghost')
  ghost.attach(bufnr, client, {
    debounce_ms = M.config.debounce_ms,
    on_busy = function(busy)
      -- A server that exited has set it to 0 already; its requests end when the buffer detaches.
      set_status({ requests = math.max(0, M.status.requests + (busy and 1 or -1)) })
    end,
    on_result = function(result)
      set_status({
        measured_ms = result.latency_ms or M.status.measured_ms,
        message = result.error or M.status.message,
      })
    end,
  })
  map(bufnr, 'accept', function()
    return ghost.accept(bufnr, 'all')
  end)
  map(bufnr, 'accept_word', function()
    return ghost.accept(bufnr, 'word')
  end)
  map(bufnr, 'accept_line', function()
    return ghost.accept(bufnr, 'line')
  end)
  map(bufnr, 'dismiss', function()
    local shown = ghost.shown(bufnr) ~= nil
    ghost.dismiss(bufnr)
    return shown
  end)
  map(bufnr, 'trigger', function()
    ghost.trigger(bufnr)
    return true
  end)
end

--- `t` with each empty table made an empty dict: vim.json encodes `{}` as an array, and the server
--- wants objects (`enable`, the options themselves). None of its options is a list.
local function json_objects(t)
  if next(t) == nil then
    return vim.empty_dict()
  end
  for key, value in pairs(t) do
    if type(value) == 'table' then
      t[key] = json_objects(value)
    end
  end
  return t
end

--- The vim.lsp client config for the server.
function M.server_config()
  local init_options = json_objects(vim.deepcopy(M.config.init_options))
  if init_options.modelPath then
    init_options.modelPath = vim.fs.normalize(init_options.modelPath)
  end
  return {
    name = NAME,
    cmd = M.config.cmd,
    filetypes = M.config.filetypes,
    init_options = init_options,
    -- One server (and one model in memory) for every buffer, whatever its project.
    reuse_client = function(client, config)
      return client.name == config.name
    end,
    handlers = {
      ['dgemma/status'] = function(_, params)
        local was = M.status.state
        -- A new status replaces the old one; its null fields arrive as nil.
        for _, key in ipairs({ 'message', 'device', 'model', 'lastLatencyMs' }) do
          M.status[key] = nil
        end
        set_status(params)
        -- Requests sent while the model loaded got nothing: ask again now that it is there.
        if params.state == 'ready' and was ~= 'ready' and was ~= 'busy' and not M.use_native() then
          require('dgemma.ghost').refresh(api.nvim_get_current_buf())
        end
      end,
    },
    before_init = function()
      set_status({ state = 'starting' })
    end,
    on_init = function(client)
      set_status({ state = 'ready' }) -- until the server says otherwise
      if M.config.inline ~= false then
        -- Its completion item holds the same middle as the ghost text: a completion plugin asking for it
        -- would run the model a second time on each pause.
        client.server_capabilities.completionProvider = nil
      end
    end,
    on_attach = on_attach,
    on_exit = function(code)
      local failed = code ~= 0 and ('server exited with code %d'):format(code) or nil
      set_status({ state = failed and 'error' or 'stopped', message = failed, requests = 0 })
    end,
  }
end

---@param opts? table see M.defaults
function M.setup(opts)
  M.config = vim.tbl_deep_extend('force', vim.deepcopy(M.defaults), opts or {})
  api.nvim_set_hl(0, 'DgemmaGhost', { link = 'Comment', default = true })
  local cmd = M.config.cmd
  if type(cmd) == 'table' and vim.fn.executable(cmd[1]) == 0 then
    -- Neovim 0.11 skips a server it cannot start without a word.
    local message = ('%s is not executable: set `cmd` in require("dgemma").setup()'):format(cmd[1])
    vim.notify('dgemma: ' .. message, vim.log.levels.ERROR)
    set_status({ state = 'error', message = message })
  end
  if vim.lsp.config then -- 0.11+
    vim.lsp.config(NAME, M.server_config())
    vim.lsp.enable(NAME)
    return
  end
  api.nvim_create_autocmd('FileType', {
    group = api.nvim_create_augroup('dgemma.start', { clear = true }),
    callback = function(args)
      local filetypes = M.config.filetypes
      if vim.bo[args.buf].buftype == '' and (not filetypes or vim.tbl_contains(filetypes, args.match)) then
        vim.lsp.start(M.server_config(), { bufnr = args.buf, reuse_client = M.server_config().reuse_client })
      end
    end,
  })
end

return M
