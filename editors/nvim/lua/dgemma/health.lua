-- :checkhealth dgemma: the server command, its version, and the model it is (or would be) using.
local M = {}

local health = vim.health

local function version_argv(cmd)
  local argv = {}
  for _, arg in ipairs(cmd) do
    if arg ~= '--stdio' then
      argv[#argv + 1] = arg
    end
  end
  argv[#argv + 1] = '--version'
  return argv
end

-- Where the server takes the model from: --model, then modelPath, then $DGEMMA_MODEL, else its bundled model.
local function configured_model(config)
  for i, arg in ipairs(config.cmd) do
    if arg == '--model' then
      return config.cmd[i + 1]
    end
  end
  return config.init_options.modelPath or vim.env.DGEMMA_MODEL
end

local function check_model(path)
  path = vim.fs.normalize(path)
  if vim.fn.isdirectory(path) == 0 then
    health.error(('model folder %s does not exist'):format(path))
  elseif vim.fn.filereadable(path .. '/config.json') == 0 then
    health.error(('%s has no config.json: not a Hugging Face checkpoint'):format(path))
  elseif #vim.fn.glob(path .. '/*.safetensors', false, true) == 0 then
    health.error(('%s has no *.safetensors weights'):format(path))
  else
    health.ok(('model folder %s (config.json, safetensors)'):format(path))
  end
end

function M.check()
  local dgemma = require('dgemma')
  local config = dgemma.config

  health.start('dgemma: server')
  local cmd = config.cmd
  health.info('command: ' .. table.concat(cmd, ' '))
  if vim.fn.executable(cmd[1]) == 0 then
    health.error(cmd[1] .. ' is not executable', {
      'pip install the dgemma-lsp package, or set `cmd` in require("dgemma").setup()',
    })
  else
    local argv = version_argv(cmd)
    local result = vim.system(argv, { text = true }):wait(30000)
    if result.code == 0 then
      health.ok(vim.trim(result.stdout))
    else
      health.error(('`%s` failed: %s'):format(table.concat(argv, ' '), vim.trim(result.stderr or '')))
    end
  end
  local mode = config.inline == false and 'off' or dgemma.use_native() and 'native' or 'shim'
  health.info(('inline completion: %s (Neovim %s)'):format(mode, tostring(vim.version())))

  health.start('dgemma: model')
  local clients = vim.lsp.get_clients({ name = 'dgemma' })
  for _, client in ipairs(clients) do
    local info = client.server_info or {}
    health.ok(('server running (client %d): %s %s'):format(client.id, info.name or '?', info.version or '?'))
  end
  local status = dgemma.status
  if #clients > 0 and status.state then
    local report = status.state == 'error' and health.error or health.info
    local details = {}
    for _, key in ipairs({ 'message', 'model', 'device' }) do
      details[#details + 1] = status[key]
    end
    report(('status: %s %s'):format(status.state, table.concat(details, ', ')))
  end
  local model = configured_model(config)
  if model then
    check_model(model)
  else
    health.info(
      'no model configured: the server uses its small bundled demonstration model; for real quality set'
        .. ' init_options.modelPath (or $DGEMMA_MODEL) to a downloaded DiffusionGemma checkpoint'
    )
  end
end

return M
