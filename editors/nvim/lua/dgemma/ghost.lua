-- Ghost text for Neovim 0.10-0.11, which have no built-in inline completion: request
-- textDocument/inlineCompletion on a debounce, draw the first item with extmarks, accept it whole,
-- by word or by line, and drop it (cancelling the request in flight) when the user types something else.
local M = {}

local api = vim.api
local uv = vim.uv or vim.loop
local METHOD = 'textDocument/inlineCompletion'
local TRIGGER = { invoked = 1, automatic = 2 }
local REQUEST_CANCELLED = -32800

M.ns = api.nvim_create_namespace('dgemma.ghost')

---@class dgemma.Item
---@field row integer 0-based row of the anchor
---@field col integer byte column where `text` starts; the text between it and the cursor was typed already
---@field text string what the item inserts from `col` on (may span lines)
---@field suffix integer bytes after the cursor that accepting the whole item replaces (auto-closed brackets)

---@class dgemma.GhostState
---@field client vim.lsp.Client
---@field opts table
---@field timer? uv.uv_timer_t
---@field request_id? integer
---@field item? dgemma.Item
local states = {} ---@type table<integer, dgemma.GhostState>

-- 0.11 made client methods take `self` and changed vim.str_byteindex's signature.
local HAS_011 = vim.fn.has('nvim-0.11') == 1

local function call(client, method, ...)
  if HAS_011 then
    return client[method](client, ...)
  end
  return client[method](...)
end

local function byte_col(line, character, encoding)
  if encoding == 'utf-8' then
    return math.min(character, #line)
  end
  local ok, col
  if HAS_011 then
    ok, col = pcall(vim.str_byteindex, line, encoding, character, false)
  else
    ok, col = pcall(vim.str_byteindex, line, character, encoding == 'utf-16')
  end
  return ok and col or #line
end

--- The part of `text` that "accept word" or "accept line" takes; the whole text for "all".
--- A word is leading whitespace (newlines included) and then a run of word characters or of
--- punctuation; a line is the text up to its first newline, or through the next line when it starts with one.
---@param text string
---@param kind 'all'|'word'|'line'
---@return string
function M.split(text, kind)
  if kind == 'word' then
    return text:match('^%s*[%w_\128-\255]+') or text:match('^%s*[^%w_%s\128-\255]+') or text
  elseif kind == 'line' then
    return text:match('^\r?\n[^\n]*') or text:match('^[^\n]*')
  end
  return text
end

local function cursor(bufnr)
  local win = api.nvim_get_current_win()
  if api.nvim_win_get_buf(win) ~= bufnr then
    return nil
  end
  local pos = api.nvim_win_get_cursor(win)
  return pos[1] - 1, pos[2]
end

--- The text still to show, or nil when the item no longer fits what is in the buffer at the cursor.
---@return string?
local function remainder(bufnr, item)
  local row, col = cursor(bufnr)
  if row ~= item.row or col < item.col then
    return nil
  end
  local line = api.nvim_buf_get_lines(bufnr, row, row + 1, false)[1] or ''
  local typed = line:sub(item.col + 1, col)
  if item.text:sub(1, #typed) ~= typed or #typed >= #item.text then
    return nil
  end
  return item.text:sub(#typed + 1)
end

local function render(bufnr, text)
  api.nvim_buf_clear_namespace(bufnr, M.ns, 0, -1)
  local row, col = cursor(bufnr)
  if not row then
    return
  end
  local lines = vim.split(text, '\n', { plain = true })
  local virt_lines = {}
  for i = 2, #lines do
    virt_lines[#virt_lines + 1] = { { lines[i], 'DgemmaGhost' } }
  end
  api.nvim_buf_set_extmark(bufnr, M.ns, row, col, {
    virt_text = { { lines[1], 'DgemmaGhost' } },
    virt_text_pos = 'inline',
    virt_lines = #virt_lines > 0 and virt_lines or nil,
    hl_mode = 'combine',
  })
end

local function stop_timer(state)
  if state.timer then
    state.timer:stop()
    state.timer:close()
    state.timer = nil
  end
end

-- Every change of the request in flight goes through here, so that `on_busy` calls stay paired.
local function set_request(state, id)
  local was_busy = state.request_id ~= nil
  state.request_id = id
  if was_busy ~= (id ~= nil) then
    state.opts.on_busy(id ~= nil)
  end
end

local function cancel_request(state)
  if state.request_id then
    call(state.client, 'cancel_request', state.request_id)
    set_request(state, nil)
  end
end

--- Hide the ghost text and forget the item; cancel the pending request and timer.
function M.dismiss(bufnr)
  local state = states[bufnr]
  if not state then
    return
  end
  stop_timer(state)
  cancel_request(state)
  state.item = nil
  api.nvim_buf_clear_namespace(bufnr, M.ns, 0, -1)
end

---@param state dgemma.GhostState
local function on_result(bufnr, state, request_id, sent, err, result)
  if state.request_id ~= request_id then
    return -- superseded or cancelled
  end
  set_request(state, nil)
  local latency_ms = (uv.hrtime() - sent.time) / 1e6
  if err then
    if err.code ~= REQUEST_CANCELLED then
      state.opts.on_result({ error = err.message or tostring(err.code) })
    end
    return
  end
  state.opts.on_result({ latency_ms = latency_ms })
  -- A result for an older state of the buffer is stale: the next request is already on its way.
  local row, col = cursor(bufnr)
  local mode = api.nvim_get_mode().mode
  if not (mode:sub(1, 1) == 'i' and row == sent.row and col == sent.col) then
    return
  end
  if api.nvim_buf_get_changedtick(bufnr) ~= sent.tick then
    return
  end
  local raw = result and (result.items or result)[1]
  if not raw then
    return
  end
  local text = type(raw.insertText) == 'table' and raw.insertText.value or raw.insertText
  text = text:gsub('\r\n', '\n') -- a CRLF document gets CRLF text; buffer lines hold no line ends
  local line = api.nvim_buf_get_lines(bufnr, row, row + 1, false)[1] or ''
  local start_col, end_col = col, col
  local range = raw.range
  if range and range.start.line == row and range['end'].line == row then
    local encoding = state.client.offset_encoding
    start_col = byte_col(line, range.start.character, encoding)
    end_col = byte_col(line, range['end'].character, encoding)
  end
  if start_col > col or end_col < col or text == '' then
    return
  end
  state.item = { row = row, col = start_col, text = text, suffix = end_col - col }
  local rest = remainder(bufnr, state.item)
  if rest then
    render(bufnr, rest)
  else
    state.item = nil
  end
end

---@param kind integer TRIGGER.invoked or TRIGGER.automatic
local function request(bufnr, kind)
  local state = states[bufnr]
  if not state or api.nvim_get_current_buf() ~= bufnr then
    return
  end
  cancel_request(state)
  local row, col = cursor(bufnr)
  local params = vim.lsp.util.make_position_params(0, state.client.offset_encoding)
  params.context = { triggerKind = kind }
  local sent = { row = row, col = col, tick = api.nvim_buf_get_changedtick(bufnr), time = uv.hrtime() }
  local request_id
  local ok, id = call(state.client, 'request', METHOD, params, function(err, result)
    on_result(bufnr, state, request_id, sent, err, result)
  end, bufnr)
  if ok then
    request_id = id
    set_request(state, id)
  end
end

--- After any edit or cursor move in insert mode: keep the item while the user types what it
--- suggests; otherwise drop it and ask again once the typing pauses.
local function on_edit(bufnr)
  local state = states[bufnr]
  if not state then
    return
  end
  local rest = state.item and remainder(bufnr, state.item)
  if rest then
    render(bufnr, rest)
    return
  end
  M.dismiss(bufnr)
  state.timer = uv.new_timer()
  state.timer:start(
    state.opts.debounce_ms,
    0,
    vim.schedule_wrap(function()
      stop_timer(state)
      if api.nvim_get_mode().mode:sub(1, 1) == 'i' then
        request(bufnr, TRIGGER.automatic)
      end
    end)
  )
end

--- Ask again when the user is typing and nothing is shown (the model may just have finished loading).
function M.refresh(bufnr)
  local state = states[bufnr]
  if state and not state.item and not state.request_id and api.nvim_get_mode().mode:sub(1, 1) == 'i' then
    on_edit(bufnr)
  end
end

--- Ask now (a user gesture: the server may spend more on it).
function M.trigger(bufnr)
  M.dismiss(bufnr)
  request(bufnr, TRIGGER.invoked)
end

--- Insert the whole item, its next word or its next line; the rest stays on screen.
---@param kind 'all'|'word'|'line'
---@return boolean accepted false when there was nothing to accept
function M.accept(bufnr, kind)
  local state = states[bufnr]
  local item = state and state.item
  local rest = item and remainder(bufnr, item)
  if not rest then
    return false
  end
  local part = M.split(rest, kind)
  local row, col = cursor(bufnr)
  local lines = vim.split(part, '\n', { plain = true })
  -- The whole item also replaces the text after the cursor that its range covers.
  local replaced = part == rest and item.suffix or 0
  api.nvim_buf_set_text(bufnr, row, col, row, col + replaced, lines)
  local end_row = row + #lines - 1
  local end_col = (#lines == 1 and col or 0) + #lines[#lines]
  api.nvim_win_set_cursor(0, { end_row + 1, end_col })
  if part == rest then
    state.item = nil
    api.nvim_buf_clear_namespace(bufnr, M.ns, 0, -1)
  else
    state.item = { row = end_row, col = end_col, text = rest:sub(#part + 1), suffix = item.suffix }
    render(bufnr, state.item.text)
  end
  return true
end

--- The ghost text on screen, or nil.
function M.shown(bufnr)
  bufnr = bufnr == 0 and api.nvim_get_current_buf() or bufnr
  local state = states[bufnr]
  return state and state.item and remainder(bufnr, state.item)
end

function M.attach(bufnr, client, opts)
  local state = states[bufnr]
  if state and state.client == client then
    return
  end
  -- A restarted server's client can attach before the old one's LspDetach.
  M.detach(bufnr)
  states[bufnr] = { client = client, opts = opts }
  local group = api.nvim_create_augroup('dgemma.ghost.' .. bufnr, { clear = true })
  api.nvim_create_autocmd({ 'InsertEnter', 'TextChangedI', 'TextChangedP', 'CursorMovedI' }, {
    group = group,
    buffer = bufnr,
    callback = function()
      on_edit(bufnr)
    end,
  })
  api.nvim_create_autocmd({ 'InsertLeave', 'BufLeave' }, {
    group = group,
    buffer = bufnr,
    callback = function()
      M.dismiss(bufnr)
    end,
  })
  -- The server stopped or crashed: forget its client, so that the next one attaches afresh.
  api.nvim_create_autocmd('LspDetach', {
    group = group,
    buffer = bufnr,
    callback = function(args)
      if args.data.client_id == client.id then
        M.detach(bufnr)
      end
    end,
  })
end

function M.detach(bufnr)
  if states[bufnr] then
    M.dismiss(bufnr)
    states[bufnr] = nil
    pcall(api.nvim_del_augroup_by_name, 'dgemma.ghost.' .. bufnr)
  end
end

return M
